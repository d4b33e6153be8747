"""Sharded election: the decisions, on a clock the test moves, over Leases kept in memory with the
API server's optimistic concurrency (a write must name the resourceVersion it read).

The same Elector runs against the real API server in tests/e2e/test_ha.py."""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import dataclasses
import datetime
import os
import subprocess
import sys

import pytest

from schedulezero_operator import election

SETTINGS = election.ElectionSettings(shards=4, lease_duration=15, renew_deadline=10, retry_period=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self, *, behind: float = 0.0) -> collections.abc.Callable[[], str]:
        """A wall clock moving with this one (replicas on one machine), or ``behind`` it by some seconds."""
        epoch = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        return lambda: (epoch + datetime.timedelta(seconds=self.now - behind)).isoformat()


class MemoryLeases:
    """Leases with resourceVersions: an update naming an old version fails, as it does in Kubernetes."""

    def __init__(self) -> None:
        self.leases: dict[str, election.LeaseRecord] = {}
        self.versions = 0
        self.down: set[str] = set()
        """Identities whose requests fail, as if cut off from the API server."""
        self.caller = ""
        self.watchers: list[collections.abc.Callable[[str, str | None], None]] = []
        self.slow: collections.abc.Callable[[], None] | None = None
        """Called inside the next update of a shard Lease, as the time a slow request takes."""

    def _tell(self, name: str) -> None:
        record = self.leases.get(name)
        for changed in self.watchers:
            changed(name, record.holder if record is not None else None)

    def _check(self) -> None:
        if self.caller in self.down:
            raise ConnectionError("API server unreachable")

    def _stored(self, record: election.LeaseRecord) -> election.LeaseRecord:
        self.versions += 1
        return dataclasses.replace(record, version=str(self.versions))

    async def get(self, name: str) -> election.LeaseRecord | None:
        self._check()
        return self.leases.get(name)

    async def create(self, name: str, record: election.LeaseRecord) -> election.LeaseRecord:
        self._check()
        if name in self.leases:
            raise election.Conflict(name)
        self.leases[name] = self._stored(record)
        self._tell(name)
        return self.leases[name]

    async def update(self, name: str, record: election.LeaseRecord) -> election.LeaseRecord:
        self._check()
        if self.slow is not None and "-shard-" in name:  # a renew that takes this long, once
            self.slow, slow = None, self.slow
            slow()
        if name not in self.leases or self.leases[name].version != record.version:
            raise election.Conflict(name)
        self.leases[name] = self._stored(record)
        self._tell(name)
        return self.leases[name]

    async def list_all(self) -> dict[str, election.LeaseRecord]:
        self._check()
        return dict(self.leases)

    async def delete(self, name: str) -> None:
        self._check()
        self.leases.pop(name, None)
        self._tell(name)

    async def watch(self, changed: collections.abc.Callable[[str, str | None], None]) -> None:
        self.watchers.append(changed)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.watchers.remove(changed)


class Replica:
    """An Elector whose requests the store attributes to it (for cutting it off)."""

    def __init__(
        self,
        store: MemoryLeases,
        clock: Clock,
        identity: str,
        settings: election.ElectionSettings = SETTINGS,
        *,
        behind: float = 0.0,
    ) -> None:
        self.store = store
        self.events: list[tuple[str, int]] = []
        self.elector = election.Elector(
            store,
            identity=identity,
            settings=settings,
            clock=clock,
            wall_clock=clock.wall(behind=behind),
            on_acquired=lambda shard: self.events.append(("acquired", shard)),
            on_lost=lambda shard, why: self.events.append(("lost", shard)),
        )

    async def round(self) -> None:
        self.store.caller = self.elector.identity
        await self.elector.round()

    async def stop(self) -> None:
        self.store.caller = self.elector.identity
        await self.elector.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryLeases:
    return MemoryLeases()


async def rounds(replicas: list[Replica], clock: Clock, count: int) -> None:
    for _ in range(count):
        for replica in replicas:
            await replica.round()
        clock.now += SETTINGS.retry_period


def holders(replicas: list[Replica]) -> dict[str, list[int]]:
    return {r.elector.identity: r.elector.held() for r in replicas}


def test_shards_are_stable_across_processes_and_spread_evenly() -> None:
    names = [f"ns{i % 7}/schedule-{i}" for i in range(10_000)]
    script = (
        "import sys; from schedulezero_operator import election\n"
        "print([election.shard_of(*n.split('/'), 8) for n in sys.argv[1:]])"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script, *names[:50]],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1] == f"{[election.shard_of(*n.split('/'), 8) for n in names[:50]]}\n"
    counts = collections.Counter(election.shard_of(*n.split("/"), 8) for n in names)
    assert sorted(counts) == list(range(8))
    assert all(abs(count - 1250) < 1250 * 0.1 for count in counts.values()), counts


async def test_one_replica_takes_every_shard(store: MemoryLeases, clock: Clock) -> None:
    alone = Replica(store, clock, "a")
    await rounds([alone], clock, 1)
    assert alone.elector.held() == [0, 1, 2, 3]
    assert alone.elector.owns("default", "anything")


async def test_replicas_share_the_shards_and_a_joiner_gets_its_share(store: MemoryLeases, clock: Clock) -> None:
    a, b = Replica(store, clock, "a"), Replica(store, clock, "b")
    await rounds([a], clock, 1)
    assert a.elector.held() == [0, 1, 2, 3]
    await rounds([a, b], clock, 3)  # a sees b's heartbeat, gives up its excess; b takes it
    assert holders([a, b]) == {"a": [0, 1], "b": [2, 3]}
    c = Replica(store, clock, "c")
    await rounds([a, b, c], clock, 3)
    shares = holders([a, b, c])
    assert max(len(held) for held in shares.values()) == 2  # ceil(4 / 3)
    assert sorted(s for held in shares.values() for s in held) == [0, 1, 2, 3]
    await a.stop()
    await rounds([b, c], clock, 2)
    assert sorted(len(held) for held in holders([b, c]).values()) == [2, 2]


async def test_expiry_is_judged_on_the_candidates_own_clock(store: MemoryLeases, clock: Clock) -> None:
    """A holder's timestamps may come from a clock far off: they date the change back a retry period at most,
    and otherwise only the time since the change was seen counts."""
    store.leases["schedulezero-shard-0"] = election.LeaseRecord(
        holder="gone", lease_duration=15, renewed="1999-01-01T00:00:00Z", version="7"
    )
    candidate = Replica(store, clock, "c")
    await candidate.round()
    assert 0 not in candidate.elector.held()  # first seen now: it may still be renewed
    clock.now += 12.9
    await candidate.round()
    assert 0 not in candidate.elector.held()
    clock.now += 0.2  # 13.1 s without a change, on the candidate's clock: 15.1 s, dated back by 2 s at most
    await candidate.round()
    assert 0 in candidate.elector.held()
    assert store.leases["schedulezero-shard-0"].transitions == 1


async def test_a_renewed_lease_is_not_taken_however_old_its_timestamps(store: MemoryLeases, clock: Clock) -> None:
    holder, candidate = Replica(store, clock, "h"), Replica(store, clock, "c")
    await rounds([holder], clock, 1)
    for _ in range(20):  # 40 s: the holder renews every round, so the candidate never sees it stand still
        await rounds([holder, candidate], clock, 1)
    assert store.leases["schedulezero-shard-0"].holder == "h"
    assert sum(len(held) for held in holders([holder, candidate]).values()) == 4


async def test_two_candidates_for_one_shard_cannot_both_win(store: MemoryLeases, clock: Clock) -> None:
    """Both read the same free Lease; the second write names a version that is gone, and fails."""
    first, second = Replica(store, clock, "a"), Replica(store, clock, "b")
    store.leases["schedulezero-shard-0"] = election.LeaseRecord(holder=None, lease_duration=15, version="seed")
    read = store.leases["schedulezero-shard-0"]
    store.caller = "a"
    await first.elector._try_acquire(0)
    store.caller = "b"
    with pytest.raises(election.Conflict):
        await store.update("schedulezero-shard-0", dataclasses.replace(read, holder="b"))
    await second.elector._try_acquire(0)
    assert (first.elector.held(), second.elector.held()) == ([0], [])
    assert store.leases["schedulezero-shard-0"].holder == "a"


@pytest.mark.parametrize("behind", [0.0, 60.0, -60.0], ids=["same-clock", "holder-clock-behind", "holder-clock-ahead"])
async def test_a_cut_off_holder_stops_before_anyone_can_take_over(
    store: MemoryLeases, clock: Clock, behind: float
) -> None:
    """However far off the holder's wall clock, which dates its renews, it is fenced before a Lease it can no
    longer renew is judged expired."""
    holder, other = Replica(store, clock, "h", behind=behind), Replica(store, clock, "o")
    await rounds([holder], clock, 1)
    await rounds([holder, other], clock, 3)
    taken_by_holder = holder.elector.held()
    assert taken_by_holder
    store.down.add("h")
    cut_at = clock.now
    fenced_at = taken_at = None
    while taken_at is None:
        clock.now += 0.5
        if fenced_at is None and not holder.elector.owns_shard(taken_by_holder[0]):
            fenced_at = clock.now
        if int(clock.now * 2) % 4 == 0:  # a round every 2 s for both; the holder's requests all fail
            await holder.round()
            await other.round()
        if taken_by_holder[0] in other.elector.held():
            taken_at = clock.now
    assert fenced_at is not None
    assert fenced_at - cut_at <= SETTINGS.renew_deadline + 2  # its last renew was at most a round before the cut
    assert taken_at - fenced_at >= SETTINGS.lease_duration - SETTINGS.renew_deadline - 2
    assert taken_at > fenced_at  # never two owners at once


async def test_a_stopped_replica_hands_its_shards_over_at_the_next_round(store: MemoryLeases, clock: Clock) -> None:
    a, b = Replica(store, clock, "a"), Replica(store, clock, "b")
    await rounds([a, b], clock, 4)
    leaving = a.elector.held()
    assert leaving
    await a.stop()
    assert a.elector.held() == []
    assert ("lost", leaving[0]) in a.events
    await rounds([b], clock, 1)  # no lease duration to wait: the holder is empty
    assert b.elector.held() == [0, 1, 2, 3]


async def test_a_stopping_replica_hands_all_its_shards_over_at_once_and_the_others_take_them_at_one_round(
    store: MemoryLeases, clock: Clock
) -> None:
    """8 shards over 3 replicas (3, 3, 2): the others are at their share while the stopping replica counts as
    live. It deletes its member Lease first, so the others' next round has room for every shard it releases;
    and it writes its final checkpoints all at once, so no release waits for another shard's checkpoint."""
    settings = dataclasses.replace(SETTINGS, shards=8)
    replicas = [Replica(store, clock, name, settings) for name in "abc"]
    await rounds(replicas, clock, 4)
    leaving = next(r for r in replicas if len(r.elector.held()) == 3)
    others = [r for r in replicas if r is not leaving]
    released = leaving.elector.held()
    writing: list[int] = []
    overlapped: list[bool] = []

    async def final_checkpoint(shard: int) -> None:
        writing.append(shard)
        await asyncio.sleep(0.01)  # the write's request
        overlapped.append(len(writing) == len(released))

    leaving.elector.before_release = final_checkpoint
    store.caller = leaving.elector.identity
    await leaving.elector.stop()
    assert overlapped == [True] * len(released), "a final checkpoint waited for another shard's"
    await rounds(others, clock, 1)
    taken = {shard for replica in others for shard in replica.elector.held()}
    assert set(released) <= taken, f"released {released}, taken at the next round {sorted(taken)}"


async def test_a_holder_late_for_its_renew_takes_its_shard_again_rather_than_resuming(
    store: MemoryLeases, clock: Clock
) -> None:
    """Past the renew deadline the holder fired nothing: it must take the shard over (catching up on what it
    skipped) rather than renew it as if nothing had happened. A busy event loop delays rounds like this."""
    alone = Replica(store, clock, "a")
    await rounds([alone], clock, 1)
    assert alone.elector.held() == [0, 1, 2, 3]
    alone.events.clear()
    clock.now += SETTINGS.renew_deadline + 1  # no round for 11 s, still within the 15 s lease
    assert alone.elector.held() == []
    await alone.round()
    assert alone.events == [*(("lost", s) for s in range(4)), *(("acquired", s) for s in range(4))]
    assert alone.elector.held() == [0, 1, 2, 3]
    assert {lease.holder for name, lease in store.leases.items() if "shard" in name} == {"a"}


async def test_a_holder_whose_renew_lands_after_the_deadline_takes_its_shards_again_rather_than_resuming(
    store: MemoryLeases, clock: Clock
) -> None:
    """The round came on time but its renew took past the deadline (an API server slow under load): the holder
    was fenced while the request was under way and fired nothing, so it takes its shards over again, which
    catches up on those times, rather than resuming as if it had owned them all along."""
    alone = Replica(store, clock, "a")
    await rounds([alone], clock, 1)
    alone.events.clear()

    def slow_request() -> None:
        clock.now += SETTINGS.renew_deadline

    store.slow = slow_request
    await alone.round()
    assert alone.events == [*(("lost", s) for s in range(4)), *(("acquired", s) for s in range(4))]
    assert alone.elector.held() == [0, 1, 2, 3]


async def test_a_dead_holders_shards_are_taken_a_lease_duration_after_its_last_renew_even_by_a_replica_at_its_share(
    store: MemoryLeases, clock: Clock
) -> None:
    """The survivor holds its share and tries no other shard while the dead replica still counts as live; once
    its member Lease expires, the shards must already have been watched expiring, not first looked at then."""
    a, b = Replica(store, clock, "a"), Replica(store, clock, "b")
    await rounds([a, b], clock, 4)
    assert sorted(len(held) for held in holders([a, b]).values()) == [2, 2]
    died = clock.now - SETTINGS.retry_period  # a's last round (SIGKILL: no release, no goodbye)
    while len(b.elector.held()) < SETTINGS.shards:
        await rounds([b], clock, 1)
        assert clock.now - died < 3 * SETTINGS.lease_duration, "never taken over"
    assert clock.now - died <= SETTINGS.lease_duration + 2 * SETTINGS.retry_period


async def test_a_dead_holders_shards_are_taken_at_expiry_when_the_survivors_are_at_their_share_and_a_newcomer_is_not(
    store: MemoryLeases, clock: Clock
) -> None:
    """8 shards over 3 replicas (3, 3, 2); one holding 3 dies and a new replica joins just before its Leases
    expire (a Deployment replacing the pod). The survivors are at their share with the newcomer counted, and
    the newcomer, having looked at the Leases only now, would judge them expired a lease duration later:
    the survivors take them at expiry, and hand the excess on to the newcomer at the next rounds."""
    settings = dataclasses.replace(SETTINGS, shards=8)
    a, b, c = (Replica(store, clock, name, settings) for name in "abc")
    await rounds([a, b, c], clock, 4)
    victim = next(r for r in (a, b, c) if len(r.elector.held()) == 3)
    lost = victim.elector.held()
    survivors = [r for r in (a, b, c) if r is not victim]
    died = clock.now - SETTINGS.retry_period  # its last round (SIGKILL: no release, no goodbye)
    await rounds(survivors, clock, int(SETTINGS.lease_duration // SETTINGS.retry_period) - 2)
    newcomer = Replica(store, clock, "d", settings)
    taken_at: dict[int, float] = {}
    while len(taken_at) < len(lost):
        await rounds([*survivors, newcomer], clock, 1)
        held = {s for r in (*survivors, newcomer) for s in r.elector.held()}
        taken_at.update({s: clock.now - died for s in lost if s in held and s not in taken_at})
        assert clock.now - died < 3 * SETTINGS.lease_duration, f"never taken over: {taken_at}"
    assert max(taken_at.values()) <= SETTINGS.lease_duration + 2 * SETTINGS.retry_period, taken_at
    await rounds([*survivors, newcomer], clock, 4)
    assert sorted(len(r.elector.held()) for r in (*survivors, newcomer)) == [2, 3, 3]


async def test_the_round_after_a_dead_holders_lease_expires_comes_as_it_expires(
    store: MemoryLeases, clock: Clock
) -> None:
    """Rounds come every retry period, but the one that takes a dead holder's shard comes when its Lease
    expires on this replica's clock, not up to a retry period later: a SIGKILL's takeover is the lease
    duration plus how late this replica saw the last renew, not plus a round on top."""
    a, b = Replica(store, clock, "a"), Replica(store, clock, "b")
    await rounds([a, b], clock, 4)
    assert b.elector._until_next_round() == SETTINGS.retry_period  # every Lease renewed: nothing expires soon
    seen = clock.now - SETTINGS.retry_period  # b's round that saw a's last renews (a died after it)
    await rounds([b], clock, 1)
    clock.now = seen + SETTINGS.lease_duration - 0.7  # 0.7 s before they expire, on b's clock
    assert abs(b.elector._until_next_round() - (0.7 + election.EXPIRY_MARGIN)) < 1e-6
    clock.now += b.elector._until_next_round()
    await b.round()
    assert b.elector.held() == [0, 1, 2, 3]


async def test_a_renew_seen_a_round_late_is_dated_back_by_its_own_timestamp(store: MemoryLeases, clock: Clock) -> None:
    """A survivor's rounds are not in step with the dead holder's: it saw the last renew up to a retry period
    after it was written, and the renew's timestamp (one machine's clock here) says so, so the Lease expires a
    lease duration after the renew itself rather than that much after the survivor happened to look."""
    a, b = Replica(store, clock, "a"), Replica(store, clock, "b")
    await rounds([a, b], clock, 4)
    for _ in range(3):  # b's rounds now come 1.9 s after a's
        await a.round()
        clock.now += 1.9
        await b.round()
        clock.now += 0.1
    died = clock.now - 2.0  # a's last renew: it is killed before its next round
    while len(b.elector.held()) < SETTINGS.shards:
        clock.now += b.elector._until_next_round()
        await b.round()
        assert clock.now - died < 2 * SETTINGS.lease_duration, "never taken over"
    assert clock.now - died == pytest.approx(SETTINGS.lease_duration + election.EXPIRY_MARGIN)


async def test_a_released_shard_is_taken_at_once_not_at_the_next_round(store: MemoryLeases) -> None:
    """Rounds a minute apart: a replica stopping (a rolling update) releases its shard, and the other, watching
    the Leases, takes it within moments rather than at its next round."""
    settings = election.ElectionSettings(shards=1, lease_duration=180, renew_deadline=120, retry_period=60)
    holder, other = (election.Elector(store, identity=name, settings=settings) for name in ("h", "o"))
    holder.start()
    other.start()
    try:
        await waiting_for(lambda: holder.held() == [0] and store.watchers)
        await asyncio.sleep(0.2)  # both past their first round, the next a minute away
        assert other.held() == []
        await holder.stop()
        await waiting_for(lambda: other.held() == [0], within=10.0)
    finally:
        await other.stop()


async def waiting_for(done: collections.abc.Callable[[], object], *, within: float = 10.0) -> None:
    for _ in range(int(within / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s")


async def step_until(
    replicas: list[Replica], clock: Clock, done: collections.abc.Callable[[], bool], *, limit: float = 60.0
) -> float:
    """Moves the clock in half seconds, a round for every replica every retry period, checking at every step
    that no shard is owned by two replicas at once; returns the time ``done()`` first held."""
    started = clock.now
    while clock.now - started < limit:
        clock.now += 0.5
        if int(clock.now * 2) % 4 == 0:
            for replica in replicas:
                await replica.round()
        owned = [s for r in replicas for s in range(SETTINGS.shards) if r.elector.owns_shard(s)]
        assert len(owned) == len(set(owned)), f"a shard owned twice at {clock.now - started} s: {holders(replicas)}"
        if done():
            return clock.now - started
    raise AssertionError(f"not done within {limit} s: {holders(replicas)}")


async def test_a_deleted_lease_fences_its_holder_at_once_and_is_taken_only_a_lease_duration_later(
    store: MemoryLeases, clock: Clock
) -> None:
    """An admin deleting a shard Lease: its holder cannot prove it still holds it, so it stops at its next
    renew; the others cannot know it stopped, so they wait out the lease duration before taking it."""
    a, b = Replica(store, clock, "a"), Replica(store, clock, "b")
    await rounds([a, b], clock, 4)
    shard = a.elector.held()[0]
    del store.leases[f"schedulezero-shard-{shard}"]
    await a.round()
    assert shard not in a.elector.held()  # at once, not at its renew deadline
    seconds = await step_until([a, b], clock, lambda: any(r.elector.owns_shard(shard) for r in (a, b)))
    assert seconds >= SETTINGS.lease_duration - SETTINGS.retry_period


async def three(store: MemoryLeases, clock: Clock) -> tuple[Replica, Replica, Replica]:
    """Three replicas on four shards: two hold two each, the third is idle, ready to take any shard."""
    replicas = Replica(store, clock, "a"), Replica(store, clock, "b"), Replica(store, clock, "c")
    await rounds(list(replicas), clock, 4)
    assert sorted(len(r.elector.held()) for r in replicas) == [0, 2, 2]
    return replicas


async def test_a_cut_off_holders_deleted_lease_is_taken_only_once_the_holder_is_fenced(
    store: MemoryLeases, clock: Clock
) -> None:
    replicas = await three(store, clock)
    holder = next(r for r in replicas if r.elector.held())
    idle = next(r for r in replicas if not r.elector.held())
    shard = holder.elector.held()[0]
    store.down.add(holder.elector.identity)
    del store.leases[f"schedulezero-shard-{shard}"]
    await step_until(list(replicas), clock, lambda: shard in idle.elector.held())  # asserts no overlap on the way


async def test_a_lease_naming_another_holder_is_not_taken_by_it_at_once(store: MemoryLeases, clock: Clock) -> None:
    """Naming the idle replica as the holder of another's shard: the holder drops it at its next renew, and
    the one named, which did not write that, treats it as held by someone else, not as its own."""
    replicas = await three(store, clock)
    holder = next(r for r in replicas if r.elector.held())
    idle = next(r for r in replicas if not r.elector.held())
    shard = holder.elector.held()[0]
    name = f"schedulezero-shard-{shard}"
    store.leases[name] = store._stored(dataclasses.replace(store.leases[name], holder=idle.elector.identity))
    await idle.round()
    assert shard not in idle.elector.held()
    await holder.round()
    assert shard not in holder.elector.held()
    seconds = await step_until(list(replicas), clock, lambda: any(r.elector.owns_shard(shard) for r in replicas))
    assert seconds >= SETTINGS.lease_duration - SETTINGS.retry_period


async def test_a_lease_edited_under_its_holder_fences_the_holder_at_once(store: MemoryLeases, clock: Clock) -> None:
    a = Replica(store, clock, "a")
    await rounds([a], clock, 1)
    name = "schedulezero-shard-0"
    store.leases[name] = store._stored(store.leases[name])  # same holder, another writer (a label, say)
    await a.round()
    assert 0 not in a.elector.held()
    assert ("lost", 0) in a.events


async def test_a_shard_being_given_up_as_the_replica_stops_is_released_rather_than_left_to_expire(
    store: MemoryLeases, clock: Clock
) -> None:
    """A rolling update: a new replica joins, and the old one, giving its excess up to it, is stopped while a
    shard's final checkpoint is still being written. The stop cancels that round, but not the release: the
    shard is handed over with its checkpoint, not left naming the stopped replica for a lease duration."""
    a, b = Replica(store, clock, "a"), Replica(store, clock, "b")
    await rounds([a], clock, 1)
    await b.round()  # b is a member now: a's next round gives two shards up
    writing, written = asyncio.Event(), []

    async def final_checkpoint(shard: int) -> None:
        writing.set()
        await asyncio.sleep(0.05)  # the write's request
        written.append(shard)

    a.elector.before_release = final_checkpoint
    store.caller = a.elector.identity
    a.elector.start()  # its first round comes at once, and gives the excess up
    await writing.wait()
    await a.stop()
    assert {name: lease.holder for name, lease in store.leases.items() if "-shard-" in name} == {
        f"{SETTINGS.prefix}-shard-{shard}": None for shard in range(4)
    }
    assert sorted(written) == [0, 1, 2, 3]  # each one's final checkpoint, the interrupted round's included
    await rounds([b], clock, 1)
    assert b.elector.held() == [0, 1, 2, 3]


async def test_a_shard_given_up_has_its_final_checkpoint_written_after_it_stops_acting_and_before_the_release(
    store: MemoryLeases, clock: Clock
) -> None:
    """The next owner starts from exactly what was sent: the hand-over hook runs once the holder no longer acts
    for the shard (nothing more can be sent) and while the Lease is still its own (nobody else can write)."""
    a, b = Replica(store, clock, "a"), Replica(store, clock, "b")
    seen: list[tuple[int, bool, str | None]] = []

    async def hand_over(shard: int) -> None:
        lease = store.leases[f"{SETTINGS.prefix}-shard-{shard}"]
        seen.append((shard, a.elector.owns_shard(shard), lease.holder))

    a.elector.before_release = hand_over
    await rounds([a], clock, 1)
    await rounds([a, b], clock, 3)  # a gives its excess up to b
    assert holders([a, b]) == {"a": [0, 1], "b": [2, 3]}
    assert sorted(seen) == [(2, False, "a"), (3, False, "a")]
    seen.clear()
    clock.now += SETTINGS.renew_deadline  # a is late for its renew: what it gives up now, it may have lost
    await a.stop()
    assert seen == []
