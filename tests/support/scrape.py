"""Reading a process's Prometheus /metrics, as a scrape would."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def total(url: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``: a counter over every Schedule."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
    )
