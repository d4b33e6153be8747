"""The operator's and a handler's log lines as a first user reads them: whole logger names, counts in
good English, and a lone replica's stop that does not claim another replica fires its Schedules."""

from __future__ import annotations

import pathlib
import re
import textwrap

import pytest

from tests.e2e.test_operator import apply, eventually, get, handler_doc, schedule_doc
from tests.support import controlplane, processes
from tests.support.operator import Operator

pytestmark = pytest.mark.e2e


def test_a_lone_replica_logs_in_full_and_in_english(
    cluster: controlplane.Cluster,
    namespace: str,
    system_kubeconfigs: dict[str, pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    module = tmp_path / "single.py"
    module.write_text(
        textwrap.dedent(
            """\
            from schedulezero_handler import Handler, expose


            class Single(Handler):
                @expose
                async def tick(self) -> str:
                    return "ok"
            """
        )
    )
    with processes.running_handler("single:Single", tmp_path, "--app-dir", str(tmp_path)) as handler:
        assert re.search(r"serving Single on \S+ \(1 method\)$", handler.output(), flags=re.MULTILINE)
        apply(cluster, namespace, handler_doc(handler.endpoint), schedule_doc("alone", schedule="@every 1s"))
        log = tmp_path / "operator.log"
        operator = Operator(system_kubeconfigs["operator"], log, "--namespace", namespace, extra=("--shards", "1"))
        operator.start()
        try:
            eventually(lambda: get(cluster, namespace, "sched", "alone")["status"]["lastSuccessfulTime"])
            eventually(lambda: "took over" in operator.output())
        finally:
            assert operator.stop() == 0
    output = operator.output()
    assert "schedulezero_operator.controller " in output  # not cut to 20 characters
    assert "schedulezero_operato " not in output
    assert re.search(r"operator \S+: 1 shard, Leases", output), output[-3000:]
    assert "shard 0: took over 1 Schedule (holding" in output
    assert "fire elsewhere" not in output
    assert "no other replica is alive, so its Schedules fire once one starts" in output
