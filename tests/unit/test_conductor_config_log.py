"""The conductor's word when its config file breaks: how many handlers it keeps scraping, in good English."""

from __future__ import annotations

import logging
import os
import pathlib

import pytest

from schedulezero_conductor import discovery


async def test_a_broken_config_keeps_the_handlers_and_says_how_many(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "conductor.yaml"
    config.write_text("handlers:\n  - {name: default/example, endpoint: 'tcp://127.0.0.1:5555'}\n")
    source = discovery.ConfigDiscovery(config)
    assert [t.handler for t in await source.targets()] == ["default/example"]
    config.write_text("handlers: [unclosed\n")
    os.utime(config, (1, 1))  # a change of stamp, however fast the test
    with caplog.at_level(logging.WARNING):
        assert [t.handler for t in await source.targets()] == ["default/example"]
    assert "; keeping 1 handler" in caplog.text
    assert "1 handlers" not in caplog.text
