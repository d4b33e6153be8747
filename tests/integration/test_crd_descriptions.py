"""What ``kubectl explain schedule.spec.FIELD`` says a field does is what the engine does and the docs say.

Each description that states behaviour is written here as its claims, each
claim with the engine tests that show it (run again here, against the real
engine and a real handler process) and the sentence of the docs that says the
same. A description changed without its claims fails the first test; a claim
the engine stops keeping fails the second; docs that stop saying it fail the
third. So the three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import yaml

from schedulezero_handler import client as client_
from schedulezero_operator import engine as engine_
from tests.integration import test_engine
from tests.integration.test_engine import client, engine, handler, sink  # noqa: F401  (fixtures the proofs take)
from tests.support import controlplane, processes

CRD = controlplane.REPO / "operator" / "schedulezero_operator" / "crds" / "schedules.schedulezero.io.yaml"

Proof = tuple[Callable[..., Coroutine[Any, Any, None]], dict[str, Any]]

SUSPENSION: Proof = (
    test_engine.test_times_during_a_suspension_are_not_runs_neither_run_nor_missed_nor_warned_of,
    {"policy": "All"},
)
FORBID: Proof = (
    test_engine.test_forbid_lets_a_run_wait_for_the_previous_one_and_skips_it_if_the_next_time_comes_first,
    {},
)
ALLOW: Proof = (test_engine.test_allow_overlaps_runs, {})
REPLACE: Proof = (test_engine.test_replace_cancels_the_running_call, {})
CHAIN_FORBID: Proof = (test_engine.test_times_due_during_a_catch_up_wait_their_turn, {"policy": "Forbid"})
CHAIN_REPLACE: Proof = (test_engine.test_times_due_during_a_catch_up_wait_their_turn, {"policy": "Replace"})


def catch_up(policy: str, deadline: float | None = None) -> Proof:
    return test_engine.test_a_restart_applies_the_catch_up_policy, {"policy": policy, "deadline": deadline}


@dataclasses.dataclass(frozen=True)
class Claim:
    text: str
    """Words of the description, in order: all the claims joined make the whole description."""
    proofs: tuple[Proof, ...]
    """Engine tests that show it, with the arguments that do."""
    docs: tuple[tuple[str, str], ...]
    """(file, words) of the documentation that say the same."""


CLAIMS: dict[str, tuple[Claim, ...]] = {
    "suspend": (
        Claim("While true, no run starts.", (SUSPENSION,), (("docs/operator.md", "suspending is not a fault"),)),
        Claim(
            "The times that pass meanwhile are not runs: on resume the Schedule goes on from its next time, and "
            "none of them is run, recorded Missed or caught up, whatever catchUpPolicy says.",
            (SUSPENSION,),
            (
                (
                    "docs/operator.md",
                    "the times that fall into a suspension are not runs: resuming goes on from the "
                    "next time, with no `Missed` records",
                ),
                ("docs/architecture.md", "after a resume, goes on from now (the suspended times are not runs)"),
            ),
        ),
    ),
    "catchUpPolicy": (
        Claim(
            "What to do, once an operator is back, with the times that passed while none could start them "
            "(operator down, a failover, the API server unreachable; not a suspension, whose times are not runs):",
            (catch_up("All"), SUSPENSION),
            (
                (
                    "docs/operator.md",
                    "Times missed while the operator was away are another matter: they are caught "
                    "up per `catchUpPolicy`",
                ),
            ),
        ),
        Claim(
            "Latest runs only the most recent one, All runs each of them (the 1000 most recent), Skip runs none.",
            (catch_up("Latest"), catch_up("All"), catch_up("Skip")),
            (("docs/operations.md", "`Latest` (the default) runs only the most recent missed time"),),
        ),
        Claim(
            "The times not run are recorded Missed.",
            (catch_up("Latest"), catch_up("Skip")),
            (("docs/operations.md", "records the\n  older ones as `Missed`"),),
        ),
        Claim(
            "Under All the missed times run one after another, and the times that come due meanwhile wait their "
            "turn, whatever concurrencyPolicy says.",
            (CHAIN_FORBID, CHAIN_REPLACE, catch_up("All")),
            (
                (
                    "docs/architecture.md",
                    "every missed time and every time that came due during the catch-up runs, each once",
                ),
            ),
        ),
    ),
    "concurrencyPolicy": (
        Claim(
            "What to do when a run is due while the previous one is still in flight: Forbid lets the new run wait and "
            "start when the previous one ends, and records it as Skipped without calling the handler if the next time "
            "comes first,",
            (FORBID,),
            (
                (
                    "docs/architecture.md",
                    "a run is active and `concurrencyPolicy: Forbid` (the default) | the time waits and starts when "
                    "the run ends; if the next time comes first, the waiting one is recorded `Skipped`",
                ),
            ),
        ),
        Claim("Allow runs both,", (ALLOW,), (("docs/architecture.md", "otherwise (or `Allow`) | the run starts"),)),
        Claim(
            "Replace cancels the running call (recorded Cancelled) and starts the new one.",
            (REPLACE,),
            (
                (
                    "docs/architecture.md",
                    "a run is active and `Replace` | the active run is cancelled locally and with "
                    "`sys.cancel` at its pod; recorded `Cancelled`; the new one starts",
                ),
            ),
        ),
    ),
    "startingDeadlineSeconds": (
        Claim(
            "A run not started within this many seconds of its nominal time is recorded Missed instead, whatever "
            "catchUpPolicy says; so are the times older than this that a catch-up finds after the operator was away.",
            (catch_up("All", 1.5),),
            (
                (
                    "docs/operations.md",
                    "it came due more than `startingDeadlineSeconds` after its nominal time (a\n  late "
                    "fire, or a time found in a catch-up), whatever `catchUpPolicy` says",
                ),
            ),
        ),
        Claim("Unset means no deadline.", (catch_up("All"),), (("docs/operator.md", "Unset means no deadline"),)),
    ),
}


def spec_descriptions() -> dict[str, str]:
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return {field: " ".join(str(schema.get("description", "")).split()) for field, schema in spec.items()}


@pytest.mark.parametrize("field", sorted(CLAIMS))
def test_each_description_is_exactly_its_claims(field: str) -> None:
    assert spec_descriptions()[field] == " ".join(claim.text for claim in CLAIMS[field])


PROOFS = sorted(
    {
        (proof.__name__, tuple(sorted(args.items())))
        for claims in CLAIMS.values()
        for c in claims
        for proof, args in c.proofs
    },
    key=repr,
)
_BY_NAME = {proof.__name__: proof for claims in CLAIMS.values() for c in claims for proof, _ in c.proofs}


@pytest.mark.parametrize(
    ("name", "arguments"), PROOFS, ids=[n.removeprefix("test_") + "".join(f"-{v}" for _, v in a) for n, a in PROOFS]
)
async def test_the_engine_does_what_the_descriptions_claim(
    name: str,
    arguments: tuple[tuple[str, Any], ...],
    engine: engine_.Engine,  # noqa: F811  (the fixtures imported above)
    client: client_.Client,  # noqa: F811
    handler: processes.HandlerProcess,  # noqa: F811
    sink: test_engine.MemorySink,  # noqa: F811
) -> None:
    proof = _BY_NAME[name]
    given = dict(arguments)
    available = {"engine": engine, "client": client, "handler": handler, "sink": sink}
    fixtures = {p: available[p] for p in inspect.signature(proof).parameters if p not in given}
    await proof(**fixtures, **given)


def test_the_operator_docs_table_is_the_descriptions() -> None:
    """docs/operator.md's table of the fields that decide what becomes of each time reads as the CRD."""
    rows = re.findall(r"^\| `(\w+)` \| (.*) \|$", (controlplane.REPO / "docs" / "operator.md").read_text(), re.M)
    table = {field: text for field, text in rows if field in CLAIMS}
    assert table == {field: spec_descriptions()[field] for field in CLAIMS}


@pytest.mark.parametrize("field", sorted(CLAIMS))
def test_the_docs_say_what_the_descriptions_claim(field: str) -> None:
    for claim in CLAIMS[field]:
        for path, words in claim.docs:
            text = (controlplane.REPO / path).read_text()
            assert " ".join(words.split()) in " ".join(text.split()), f"{path} no longer says: {words}"
