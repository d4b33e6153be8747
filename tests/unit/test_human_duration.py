"""The LAST DURATION column's text: a duration as people read it, not seconds to six places."""

from __future__ import annotations

import pytest

from schedulezero_operator.kubeapi import human_duration


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.000412, "0.4ms"),
        (0.012899, "13ms"),
        (0.25, "250ms"),
        (0.9996, "1.00s"),
        (1.234, "1.23s"),
        (12.34, "12.3s"),
        (59.96, "1m0s"),
        (125.2, "2m5s"),
        (3725, "1h2m"),
    ],
)
def test_durations_read_as_people_write_them(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown
