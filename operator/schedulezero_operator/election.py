"""Sharded leader election on Leases: which operator replica fires which Schedules.

Schedules are split into ``shards`` by a stable hash of ``namespace/name``;
each shard is one Lease, held by at most one replica. Every replica also
renews a member Lease of its own, so each knows how many replicas are alive
and takes free shards only up to its fair share, ceil(shards / live replicas),
giving its excess up when another replica joins. A shard whose holder died
is the exception: any replica takes it at expiry, share or not, and hands
the excess on at the next rounds, so it does not wait for a replica that
joined meanwhile to watch its Lease expire from scratch.

The rules are client-go's ``leaderelection``:

- Expiry is judged on the candidate's own monotonic clock, from the moment it
  last saw the Lease *change* (clocks of two machines do not agree; a
  monotonic interval on one does). The holder's own timestamp may date that
  moment back, by a retry period at most: a round sees a renew up to a retry
  period late, and the timestamp says by how much. However wrong the
  holder's clock, the expiry is then at most a retry period early, which
  the gap between the renew deadline and the lease duration leaves room for
  (``ElectionSettings.backdating``).
- Every write carries the Lease's ``resourceVersion``, so of two replicas
  trying to take a shard at once, the API server lets exactly one win.
- Fencing: a holder owns a shard only while its last successful renew
  (timed from *before* the request was sent) is younger than the renew
  deadline, which is shorter than the lease duration that others wait before
  taking over. A replica that was paused, partitioned or slow fires nothing
  of a shard it may have lost, before anyone else can have taken it.

Leases are inputs others can write, so both sides check them:

- A holder renews only the Lease as it left it: if its renew finds the Lease
  deleted, naming another holder, or at another resourceVersion than its own
  last write (someone edited it), it drops the shard at once, fenced, rather
  than at its next renew deadline.
- A taker treats a Lease that is missing, or that names a holder (even this
  replica) it did not write itself, as held: it takes it only once it has not
  changed for a lease duration on its own clock, by when any holder's renew
  deadline has passed. A missing Lease this replica never saw is judged from
  when it first found it missing, unless no other replica is alive. Only a
  Lease its holder released (no holder) is taken at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard of an object: stable across processes and versions (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{namespace}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclasses.dataclass(frozen=True, kw_only=True)
class ElectionSettings:
    shards: int = 1
    """Shards, each one Lease; 1 is plain leader election."""
    lease_duration: float = 15.0
    """How long others wait, from the last change they saw, before taking a Lease over."""
    renew_deadline: float = 10.0
    """A holder owns a shard only while its last successful renew is younger than this."""
    retry_period: float = 2.0
    """Seconds between rounds of renewing, acquiring and releasing."""
    prefix: str = "schedulezero"
    """Lease names: PREFIX-shard-N, and PREFIX-member-IDENTITY for the heartbeats."""

    @property
    def backdating(self) -> float:
        """The most a Lease's own timestamp may date back the moment another replica first saw it: a retry
        period (how late a round sees a renew), and never more than half the gap between the renew deadline
        and the lease duration, so that a holder is fenced well before anyone can judge its Lease expired."""
        return min(self.retry_period, (self.lease_duration - self.renew_deadline) / 2)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError("shards must be at least 1")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need 0 < retry period < renew deadline < lease duration")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    """What the election reads and writes of a Lease."""

    holder: str | None
    lease_duration: float
    transitions: int = 0
    renewed: str = ""
    """The holder's renew time (RFC 3339): dates this version back by ``ElectionSettings.backdating`` at most."""
    version: str = ""
    """The object's resourceVersion: the precondition of every update."""


EDITED = "its Lease "
"""How the reasons for dropping a shard begin when someone else deleted or wrote its Lease."""


def edited(why: str) -> bool:
    """Whether a shard was dropped because someone else deleted or wrote its Lease (``on_lost``'s reason)."""
    return why.startswith(EDITED)


class Conflict(Exception):
    """Another replica wrote the Lease first (HTTP 409), or created it first."""


class LeaseStore(Protocol):
    """Lease access: the Kubernetes API in the operator (``leases.KubeLeases``)."""

    async def get(self, name: str) -> LeaseRecord | None: ...

    async def create(self, name: str, record: LeaseRecord) -> LeaseRecord:
        """Raises Conflict if it exists."""

    async def update(self, name: str, record: LeaseRecord) -> LeaseRecord:
        """Replaces the Lease if its resourceVersion is still ``record.version``; raises Conflict otherwise."""

    async def list_all(self) -> dict[str, LeaseRecord]:
        """Every Lease of this election (``PREFIX-member-*`` and ``PREFIX-shard-*``), by name: one request."""

    async def delete(self, name: str) -> None: ...

    async def watch(self, changed: Callable[[str, str | None], None]) -> None:
        """Calls ``changed(name, holder)`` for each change to the election's Leases as it happens (the holder
        None once released or deleted), starting with each Lease as it is, until the watch ends; the caller
        then watches again."""


EXPIRY_MARGIN = 0.05
"""Seconds after a Lease's expiry (on this replica's clock) that the round taking it comes."""


@dataclasses.dataclass
class _Seen:
    version: str
    at: float
    """Monotonic time at which this version was first seen."""
    since: float | None = None
    """Monotonic time from which its expiry counts: ``at``, dated back by the holder's timestamp (bounded)."""

    @property
    def written(self) -> float:
        return self.at if self.since is None else self.since


class Elector:
    """One replica's view: which shards it holds, renews, takes and gives up."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        identity: str,
        settings: ElectionSettings,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] | None = None,
        on_acquired: Callable[[int], None] | None = None,
        on_lost: Callable[[int, str], None] | None = None,
    ) -> None:
        self.store = store
        self.identity = identity
        self.settings = settings
        self.clock = clock
        self._wall = wall_clock or _now_rfc3339
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.before_release: Callable[[int], Awaitable[None]] | None = None
        """Awaited between no longer acting for a shard and releasing its Lease: the final checkpoint."""
        self.renewed: dict[int, float] = {}
        """Shards held, with the (monotonic) start of their last successful renew."""
        self.transitions = 0
        """Shards this replica took over from another holder or from nobody."""
        self.predecessor_until: dict[int, float | None] = {}
        """Per shard acquired, until when (Unix time) its previous holder may have sent runs: a new owner's
        catch-up marks the times up to then as re-sends, which the handler's reply cache answers."""
        self.generation: dict[int, int] = {}
        """Per shard, which of this replica's acquisitions holds it now (the count of transitions then): the
        operator acts for a shard only once it has caught up on this very acquisition."""
        self.live_members = 1
        self._listed: dict[str, LeaseRecord] = {}
        """Every Lease of the election as the last round listed them."""
        self._seen: dict[str, _Seen] = {}
        self._written: dict[int, str] = {}
        """Per shard held, the resourceVersion of this replica's own last write of its Lease."""
        self._stopping = False
        self._releasing: dict[int, asyncio.Task[None]] = {}
        """Releases under way: a stop that cancels the round giving a shard up lets them finish."""
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._woken: asyncio.Event | None = None
        """Set when a watched Lease is released or deleted: the next round comes at once."""

    # -- what the engine asks -----------------------------------------------------

    def owns_shard(self, shard: int) -> bool:
        """Whether this replica may act for the shard now: held, and renewed within the renew deadline."""
        renewed = self.renewed.get(shard)
        return renewed is not None and self.clock() - renewed < self.settings.renew_deadline

    def owns(self, namespace: str, name: str) -> bool:
        return self.owns_shard(shard_of(namespace, name, self.settings.shards))

    def held(self) -> list[int]:
        return sorted(shard for shard in list(self.renewed) if self.owns_shard(shard))  # a copy: another thread

    # -- running ------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()
        self._task = loop.create_task(self._run())
        self._watcher = loop.create_task(self._watch())

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.round()
            except Exception:
                log.exception("election round failed; retrying in %.1f s", self.settings.retry_period)
            await self._pause(self._until_next_round())

    async def _pause(self, seconds: float) -> None:
        """Until the next round: ``seconds``, or less if the watch sees a Lease released or a member gone."""
        assert self._woken is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), seconds)
        self._woken.clear()

    async def _watch(self) -> None:
        """Watches the Leases between rounds, so that a shard another replica releases (a rolling update, a
        scale-down) is taken within a request's time rather than at this replica's next round, up to a
        retry period later. The rounds alone stay correct: a watch that fails only costs that time."""
        while not self._stopping:
            try:
                await self.store.watch(self._changed)
            except Exception as error:
                log.debug(
                    "watching the Leases failed (%s); watching again in %.1f s", error, self.settings.retry_period
                )
                await asyncio.sleep(self.settings.retry_period)

    def _changed(self, name: str, holder: str | None) -> None:
        if holder is None and self._woken is not None and name != self._member_name(self.identity):
            self._woken.set()

    def _until_next_round(self) -> float:
        """A retry period, or less when another holder's shard Lease expires sooner (on this replica's clock):
        the round that takes it comes as it expires, not up to a retry period later."""
        wait = self.settings.retry_period
        prefix = f"{self.settings.prefix}-shard-"
        now = self.clock()
        for name, record in self._listed.items():
            seen = self._seen.get(name)
            if name.startswith(prefix) and record.holder and record.holder != self.identity and seen is not None:
                expires = seen.written + record.lease_duration - now
                if expires >= 0:
                    wait = min(wait, expires + EXPIRY_MARGIN)
        return wait

    async def stop(self) -> None:
        """Stops renewing and releases every Lease held, so others take over within a retry period."""
        self._stopping = True
        running = [task for task in (self._task, self._watcher) if task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        # The member Lease goes first: the others' next round counts this replica gone, so their fair share
        # already has room for the shards it releases (counted live, it held them back until it was gone).
        with contextlib.suppress(Exception):
            await self.store.delete(self._member_name(self.identity))
        # All at once: each shard's final checkpoint and release wait for none of the others'. A shard the
        # cancelled round was giving up (a rebalance as the replica stops) is no longer held, but its release
        # goes on: left half-done, its Lease would name this replica until it expired.
        under_way = list(self._releasing.values())
        await asyncio.gather(*(self._release(shard) for shard in sorted(self.renewed)), *under_way)

    async def round(self) -> None:
        """One round: heartbeat, count the live, renew, give up the excess, take free shards."""
        try:
            await self._heartbeat()
            await self._survey()
        except Exception as error:  # the shards' own requests fail alike, and fencing does the rest
            log.warning("heartbeat failed: %s", error)
        share = math.ceil(self.settings.shards / self.live_members)
        # First: a shard whose renew deadline passed (this replica was starved, paused or cut off) fired
        # nothing meanwhile. Renewing it now would resume it silently; losing it and taking it again makes
        # the takeover catch up on what it skipped.
        self._notice_losses()
        for shard in sorted(self.renewed):
            await self._renew(shard)
        for shard in sorted(self.renewed, reverse=True)[: max(0, len(self.renewed) - share)]:
            await self._release(shard)
        for shard in range(self.settings.shards):
            if len(self.renewed) >= share:
                break
            if shard not in self.renewed:
                await self._try_acquire(shard)
        # A shard whose holder stopped renewing it is taken at expiry even beyond the share: the replica
        # below its share may be one that just joined, whose clock has watched the Lease for moments only and
        # would judge it expired a lease duration later. The excess goes on to it at the next rounds.
        for shard in range(self.settings.shards):
            if shard not in self.renewed and self._orphaned(shard):
                await self._try_acquire(shard)

    # -- members --------------------------------------------------------------------

    def _member_name(self, identity: str) -> str:
        return f"{self.settings.prefix}-member-{identity}"

    async def _heartbeat(self) -> None:
        name = self._member_name(self.identity)
        record = await self.store.get(name)
        fresh = LeaseRecord(holder=self.identity, lease_duration=self.settings.lease_duration, renewed=self._wall())
        if record is None:
            with contextlib.suppress(Conflict):
                await self.store.create(name, fresh)
        else:
            with contextlib.suppress(Conflict):
                await self.store.update(name, dataclasses.replace(fresh, version=record.version))

    async def _survey(self) -> None:
        """Counts the live members, and notes every shard Lease's changes, held or not.

        Noting them every round starts a dead holder's expiry from its last
        renewal, not from when this replica first looked at the shard, which it
        does only once it falls below its share: that is when the dead
        holder's own member Lease has expired, a lease duration later.
        """
        leases = self._listed = await self.store.list_all()
        members, shards = f"{self.settings.prefix}-member-", f"{self.settings.prefix}-shard-"
        own = self._member_name(self.identity)
        live = 1
        for name, record in leases.items():
            if name.startswith(shards):
                self._observe(name, record)
            elif name.startswith(members) and name != own and not self._expired(name, record):
                live += 1
        for name in [n for n in self._seen if n.startswith(members) and n not in leases]:
            del self._seen[name]
        self.live_members = live

    # -- shards ---------------------------------------------------------------------

    def _shard_name(self, shard: int) -> str:
        return f"{self.settings.prefix}-shard-{shard}"

    def _observe(self, name: str, record: LeaseRecord) -> _Seen:
        """The moment this version of the Lease was first seen, on this replica's own clock."""
        seen = self._seen.get(name)
        if seen is None or seen.version != record.version:
            now = self.clock()
            seen = self._seen[name] = _Seen(record.version, now, now - self._age(record))
        return seen

    def _age(self, record: LeaseRecord) -> float:
        """How long ago its writer says this version was written, by the two wall clocks, trusted only up to
        ``backdating``: a holder's clock far behind makes its Lease expire that much early at most."""
        written, now = _seconds(record.renewed), _seconds(self._wall())
        if written is None or now is None:
            return 0.0
        return min(max(now - written, 0.0), self.settings.backdating)

    def _orphaned(self, shard: int) -> bool:
        """Whether the shard's Lease, as last listed, names a holder that has not renewed it for a lease
        duration on this replica's clock (a released Lease names none, and goes to a replica below its share)."""
        name = self._shard_name(shard)
        record = self._listed.get(name)
        return record is not None and bool(record.holder) and self._expired(name, record)

    def _expired(self, name: str, record: LeaseRecord) -> bool:
        """Whether ``record`` has not changed for a lease duration, on this replica's own clock."""
        return self.clock() - self._observe(name, record).written > record.lease_duration

    async def _renew(self, shard: int) -> None:
        name = self._shard_name(shard)
        started = self.clock()
        try:
            record = await self.store.get(name)
            if record is None:
                self._drop(shard, f"{EDITED}was deleted")
                return
            if record.holder != self.identity:
                self._drop(shard, f"{EDITED}names {record.holder or 'no holder'}")
                return
            if record.version != self._written.get(shard):
                self._drop(shard, f"{EDITED}was changed by someone else")
                return
            renewed = await self.store.update(name, dataclasses.replace(record, renewed=self._wall()))
        except Conflict:  # written by someone else between the read and the write
            self._drop(shard, f"{EDITED}was changed by someone else")
            return
        except Exception as error:
            log.warning("shard %d: renew failed: %s", shard, error)
            return  # retried next round; ownership fades at the renew deadline if this keeps up
        self._seen[name] = _Seen(renewed.version, self.clock())
        if shard in self.renewed:
            self._written[shard] = renewed.version
            if not self.owns_shard(shard):
                # The renew deadline passed while the request was under way (a slow API server, a starved
                # replica): fenced meanwhile, the shard fired nothing. Resuming it would lose those times for
                # good; dropped and taken again at once (the Lease is as this replica left it), its takeover
                # catches them up.
                self._drop(shard, f"renewed only after {self.settings.renew_deadline:.0f} s")
                return
            self.renewed[shard] = started

    async def _try_acquire(self, shard: int) -> None:
        name = self._shard_name(shard)
        started = self.clock()
        wall = self._wall()
        before = self._seen.get(name)
        try:
            record = await self.store.get(name)
            if record is None:
                if self._maybe_held(name):
                    return
                fresh = LeaseRecord(holder=self.identity, lease_duration=self.settings.lease_duration, renewed=wall)
                taken = await self.store.create(name, fresh)
            elif record.holder and not self._as_left(shard, record) and not self._expired(name, record):
                return  # held, by another or under this replica's name by someone else's write: wait for expiry
            else:
                taken = await self.store.update(
                    name,
                    dataclasses.replace(
                        record,
                        holder=self.identity,
                        lease_duration=self.settings.lease_duration,
                        transitions=record.transitions + (record.holder != self.identity),
                        renewed=wall,
                    ),
                )
        except Conflict:
            return
        except Exception as error:
            log.warning("shard %d: acquiring failed: %s", shard, error)
            return
        self.predecessor_until[shard] = self._predecessor_until(before, record, started)
        self._seen[name] = _Seen(taken.version, self.clock())
        self._written[shard] = taken.version
        self.transitions += 1
        self.generation[shard] = self.transitions  # before the shard shows as held, for another thread
        self.renewed[shard] = started
        log.info("shard %d acquired (holding %s)", shard, sorted(self.renewed))
        if self.on_acquired is not None:
            self.on_acquired(shard)

    def _predecessor_until(self, before: _Seen | None, record: LeaseRecord | None, started: float) -> float | None:
        """Until when (Unix time) the shard's previous holder may have sent runs, or None if it had none.

        A holder acts only while its last renew, begun before this replica saw
        that renew's version, is younger than the renew deadline; one that
        released the Lease stopped acting before it wrote the release. Judged
        on this replica's clock, from when it first saw the Lease as it is now.
        """
        if record is not None and not record.holder:
            at = before.at if before is not None else started
            return time.time() - (self.clock() - at)
        if record is None and before is None:
            return None  # never seen, never there: a first holder
        at = before.at if before is not None else started
        return time.time() - (self.clock() - at) + self.settings.renew_deadline

    def _as_left(self, shard: int, record: LeaseRecord) -> bool:
        """Whether the Lease is just as this replica last wrote it, holding it: nobody else acted on it since."""
        return record.holder == self.identity and record.version == self._written.get(shard)

    def _maybe_held(self, name: str) -> bool:
        """Whether a missing shard Lease may still have a holder acting on it: someone deleted it less than a
        lease duration after it last changed, or this replica cannot tell and another replica is alive."""
        seen = self._seen.get(name)
        if seen is None:
            if self.live_members <= 1:
                return False
            seen = self._seen[name] = _Seen("", self.clock())
            log.info("%s is missing: taken if still missing in %.0f s", name, self.settings.lease_duration)
        return self.clock() - seen.at <= self.settings.lease_duration

    async def _release(self, shard: int) -> None:
        """Gives a shard up (``_let_go``) in a task of its own, which a cancelled round does not interrupt."""
        task = self._releasing.get(shard)
        if task is None:
            task = self._releasing[shard] = asyncio.get_running_loop().create_task(self._let_go(shard))
            task.add_done_callback(lambda _: self._releasing.pop(shard, None))
        await asyncio.shield(task)

    async def _let_go(self, shard: int) -> None:
        """Gives a shard up: an empty holder, so that another replica takes it at its next round.

        It stops acting for the shard first, then (while the Lease is still its own and fresh) lets
        ``before_release`` write the shard's final checkpoint, so that the next owner starts from exactly
        what was sent rather than from a checkpoint up to a second old.
        """
        name = self._shard_name(shard)
        fresh = self.owns_shard(shard)
        self._drop(shard, "released")
        if fresh and self.before_release is not None:
            try:
                await asyncio.wait_for(self.before_release(shard), timeout=self.settings.renew_deadline / 2)
            except Exception as error:  # released all the same: the next owner re-sends what may have gone out
                log.warning("shard %d: final checkpoint not written before the release (%s)", shard, error)
        try:
            record = await self.store.get(name)
            if record is not None and record.holder == self.identity:
                await self.store.update(name, dataclasses.replace(record, holder=None, renewed=self._wall()))
        except Exception as error:  # it then expires instead
            log.warning(
                "shard %d: release failed (%s); it expires in %.0f s", shard, error, self.settings.lease_duration
            )

    def _notice_losses(self) -> None:
        for shard in sorted(self.renewed):
            if not self.owns_shard(shard):
                self._drop(shard, f"not renewed within {self.settings.renew_deadline:.0f} s")

    def _drop(self, shard: int, why: str) -> None:
        if self.renewed.pop(shard, None) is None:
            return
        log.info("shard %d lost: %s (holding %s)", shard, why, sorted(self.renewed))
        if self.on_lost is not None:
            self.on_lost(shard, why)


def _seconds(rfc3339: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(rfc3339).timestamp() if rfc3339 else None
    except ValueError:  # an edited Lease: not dated back
        return None


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
