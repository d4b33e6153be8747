"""What ``kubectl apply`` says of a Schedule the API server refuses: the field, the value and what is wrong."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_operator import schedule_doc
from tests.support import controlplane

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/Berln", "Local", "europe/berlin"])
def test_an_unknown_time_zone_is_refused_naming_it(cluster: controlplane.Cluster, namespace: str, zone: str) -> None:
    document = schedule_doc("zoned", schedule="0 9 * * *", timeZone=zone)
    refused = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document), check=False)
    assert refused.returncode != 0
    assert (
        f'spec.timeZone: Invalid value: "{zone}": unknown time zone {zone}: timeZone must be an IANA time zone, '
        "such as Europe/Berlin"
    ) in refused.stderr, refused.stderr
    assert '"string"' not in refused.stderr


def test_a_known_time_zone_is_accepted(cluster: controlplane.Cluster, namespace: str) -> None:
    document = schedule_doc("zoned", schedule="0 9 * * *", timeZone="Australia/Lord_Howe")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))
