"""Progress checkpoints: one ConfigMap per shard, so a failover neither misses nor repeats runs.

Status is written at most every few seconds per Schedule (and, under an API
budget, later still), so it cannot say exactly how far a Schedule got. Each
shard's owner keeps a checkpoint: for every Schedule of the shard, the last
nominal time started and the scheduled runs in flight, written about once a
second while anything changes, and at least once a minute regardless. Its
cost is one write per shard per second, however many Schedules there are. A
new owner starts from the newer of a Schedule's status and its checkpoint,
and re-sends the runs in flight under the same run ids, which a handler
answers from its reply cache. The final checkpoint of a shard given up (a
rebalance, a SIGTERM) also carries the run records no status write has
carried yet, so the replica lets the shard go without first writing its
status backlog, and the next owner writes them.

A checkpoint is an input like a Schedule's status (``inputs.py``): anyone
allowed to edit ConfigMaps in the operator's namespace can damage or delete
it. Its entries are read one by one, a new owner checks each against its
Schedule before acting on it and writes the checkpoint back at once with only
its own Schedules' believable progress, and an owner whose write finds the
ConfigMap deleted creates it again.

Size: an entry is 55 bytes (a uid and a millisecond timestamp), 71 with a
run in flight and 14 more for each further run in flight (only
``concurrencyPolicy: Allow`` has several). 10,000 Schedules that all have a
run in flight take 710 KB, and one checkpoint (``MAX_SIZE``, below the API
server's 1 MiB object limit) holds just under 13,000 of them. A checkpoint
that would exceed ``MAX_SIZE`` is not written, and says so loudly (an ERROR
log line, once per shard until it fits again): use more shards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from schedulezero_operator import election, engine, inputs, kubeapi, runs, status
from schedulezero_operator.sinks import ScheduleKey

log = logging.getLogger(__name__)

MAX_SIZE = 900 * 1024
"""Largest checkpoint written; the API server refuses objects above 1 MiB, metadata included."""
KEY = "progress.json"
RECORDS_OVERHEAD = 4
"""Bytes an entry grows by when it carries run records, besides the records (``,[],`` and the brackets)."""
REVISIT = 500
"""Entries each write renders again although no change was reported for them, round the shard in turn: a
change the engine failed to report is in the checkpoint within a few dozen writes all the same."""


Packed = dict[str, list[list[Any]]]
"""Schedules' run records as ``packed_records`` packs them, by uid: packed once, then both measured and
written."""


def encode(progress: dict[str, engine.Progress], *, packed: Packed | None = None) -> str:
    """The checkpoint of ``progress``; the run records of the uids in ``packed`` as packed there already."""
    return json.dumps({"version": 1, "schedules": _entries(progress, packed or {})}, separators=(",", ":"))


def _entries(progress: dict[str, engine.Progress], packed: Packed) -> dict[str, list[Any]]:
    entries: dict[str, list[Any]] = {}
    for uid, p in sorted(progress.items()):
        if (entry := _entry(uid, p, packed)) is not None:
            entries[uid] = entry
    return entries


def _entry(uid: str, p: engine.Progress, packed: Packed) -> list[Any] | None:
    """One Schedule's entry; None when there is nothing to say (it never ran)."""
    if p.records:
        records = packed[uid] if uid in packed else packed_records(uid, p.records)
        return [_ms(p.last_scheduled), [_ms(t) for t in p.in_flight], records]
    if p.in_flight:
        return [_ms(p.last_scheduled), [_ms(t) for t in p.in_flight]]
    if p.last_scheduled is not None:
        return [_ms(p.last_scheduled)]
    return None


def _fragment(uid: str, p: engine.Progress) -> str:
    """One Schedule's entry as the text it takes in a checkpoint (``"uid":[...]``), or "" for none."""
    entry = _entry(uid, p, {})
    return "" if entry is None else f"{json.dumps(uid)}:{json.dumps(entry, separators=(',', ':'))}"


def _joined(fragments: Iterable[str]) -> str:
    """A checkpoint from its entries' fragments: the same document ``encode`` writes, in another order."""
    return '{"version":1,"schedules":{' + ",".join(fragments) + "}}"


PACKED_FIELDS = 10
"""A handed-over run record's fields, in order: scheduled (Unix milliseconds), outcome and attempts, then
(trailing ones left out when empty) start (milliseconds after scheduled), duration (milliseconds after
start), result, error, endpoint, trigger (empty: the schedule's) and run id (empty: the one the operator
derives from the Schedule's uid and the scheduled time)."""


def packed_records(uid: str, records: tuple[dict[str, Any], ...]) -> list[list[Any]]:
    """Run records (as status renders them) as a checkpoint holds them: about half the size, so that a
    shard's final checkpoint has room for the records of a long status backlog."""
    packed = []
    for record in records:
        scheduled = status.parse_rfc3339(record.get("scheduledTime"))
        run_id = record.get("runId")
        at, start, finish = (
            _ms(status.parse_rfc3339(record.get(k))) for k in ("scheduledTime", "startTime", "finishTime")
        )
        fields = [
            at,
            record.get("outcome"),
            record.get("attempts", 0),
            None if start is None or at is None else start - at,
            None if finish is None or start is None else finish - start,
            record.get("result"),
            record.get("error"),
            record.get("endpoint"),
            None if record.get("trigger", "schedule") == "schedule" else record.get("trigger"),
            None if scheduled is not None and run_id == str(runs.run_id(uid, scheduled)) else run_id,
        ]
        while fields[-1] is None:
            fields.pop()
        packed.append(fields)
    return packed


def unpacked_record(uid: str, packed: Any) -> Any:
    """A packed run record back in the form status renders, for ``inputs`` to check; what cannot be one is
    handed on as it is, and refused there."""
    if not isinstance(packed, list) or not 3 <= len(packed) <= PACKED_FIELDS:
        return packed
    fields = [*packed, *[None] * (PACKED_FIELDS - len(packed))]
    scheduled_ms, outcome, attempts, start_ms, finish_ms, result, error, endpoint, trigger, run_id = fields
    try:
        scheduled = _time(scheduled_ms)
        start = None if start_ms is None else _time(scheduled_ms + start_ms)
        finish = None if finish_ms is None or start_ms is None else _time(scheduled_ms + start_ms + finish_ms)
    except (ValueError, TypeError, OverflowError, OSError):
        return packed
    record = {
        "runId": run_id if run_id is not None else str(runs.run_id(uid, scheduled)),
        "scheduledTime": status.rfc3339(scheduled),
        "outcome": outcome,
        "attempts": attempts,
        "startTime": status.rfc3339(start),
        "finishTime": status.rfc3339(finish),
        "result": result,
        "error": error,
        "endpoint": endpoint,
        "trigger": trigger,
    }
    return {key: value for key, value in record.items() if value is not None}


def fitting_records(
    progress: dict[str, engine.Progress], room: int, *, packed: Packed | None = None
) -> tuple[dict[str, engine.Progress], list[str]]:
    """``progress`` with as many Schedules' run records as fit in ``room`` bytes of JSON (the Schedules with
    the fewest first), and the uids of those whose records did not fit. The records are measured as
    ``packed`` has them, or packed here."""
    packed = packed if packed is not None else {}
    sizes = sorted(
        (len(json.dumps(packed[uid] if uid in packed else packed_records(uid, p.records), separators=(",", ":"))), uid)
        for uid, p in progress.items()
        if p.records
    )
    left, used = dict(progress), 0
    over: list[str] = []
    for size, uid in sizes:
        if used + size + 1 <= room:
            used += size + 1
        else:
            over.append(uid)
            left[uid] = dataclasses.replace(progress[uid], records=())
    return left, over


def decode(text: str | None) -> dict[str, engine.Progress]:
    """The Progress a checkpoint holds; an unreadable one holds nothing (status still does)."""
    return read_entries(text)[0]


def read_entries(text: str | None) -> tuple[dict[str, engine.Progress], int]:
    """The Progress a checkpoint holds, entry by entry, and how many entries were unreadable.

    A checkpoint is an input anyone with access to ConfigMaps can edit: one
    unreadable entry costs only that entry, not the shard's whole checkpoint,
    and one entry holds at most ``inputs.MAX_IN_FLIGHT`` runs in flight.
    """
    try:
        entries = json.loads(text or "{}").get("schedules", {})
        items = list(entries.items())
    except (ValueError, TypeError, AttributeError, RecursionError):
        log.warning("unreadable checkpoint ignored")
        return {}, 1
    progress: dict[str, engine.Progress] = {}
    unreadable = 0
    for uid, entry in items:
        try:
            if not isinstance(entry, list) or not entry or len(entry) > 3:
                raise TypeError("entry")
            flights = entry[1] if len(entry) > 1 else []
            records = entry[2] if len(entry) > 2 else []
            if not isinstance(flights, list) or not isinstance(records, list):
                raise TypeError("in flight")
            last = None if entry[0] is None else _time(entry[0])
            in_flight = [_time(t) for t in flights[-2 * inputs.MAX_IN_FLIGHT :]]
        except (ValueError, TypeError, OverflowError, OSError):
            unreadable += 1
            continue
        # Run records are checked one by one against the Schedule at takeover (inputs.checked_progress).
        handed = tuple(unpacked_record(uid, packed) for packed in records[-2 * engine.MAX_UNWRITTEN :])
        progress[uid] = engine.Progress(last, tuple(sorted(set(in_flight))), handed)
    return progress, unreadable


def merge(*sources: dict[str, engine.Progress]) -> dict[str, engine.Progress]:
    """Per Schedule, the latest time from any source and every run in flight in any."""
    merged: dict[str, engine.Progress] = {}
    for source in sources:
        for uid, progress in source.items():
            known = merged.get(uid)
            if known is None:
                merged[uid] = progress
                continue
            times = [t for t in (known.last_scheduled, progress.last_scheduled) if t is not None]
            merged[uid] = engine.Progress(
                max(times) if times else None,
                tuple(sorted({*known.in_flight, *progress.in_flight})),
                known.records + progress.records,
            )
    return merged


def _brief(error: Exception) -> str:
    """An error in one line: an ApiException's own text spans its headers and body, a line each."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return " ".join(str(error).split())[:200] or type(error).__name__


def _ms(moment: datetime.datetime | None) -> int | None:
    return None if moment is None else round(moment.timestamp() * 1000)


def _time(ms: Any) -> datetime.datetime:
    if not isinstance(ms, int) or isinstance(ms, bool):
        raise TypeError("timestamp")
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)


def believed(
    loaded: dict[str, engine.Progress], own: dict[str, engine.Progress], *, now: datetime.datetime
) -> dict[str, engine.Progress]:
    """Of a checkpoint read back, what may be written again: entries of the shard's own Schedules (in
    ``own``, by uid) only, with no time beyond now plus ``inputs.SKEW`` and at most ``inputs.MAX_IN_FLIGHT``
    runs in flight. Anything else, however much of it someone put there, is not carried on."""
    limit = now + inputs.SKEW
    kept = {}
    for uid, progress in loaded.items():
        if uid not in own:
            continue
        last = progress.last_scheduled if progress.last_scheduled is None or progress.last_scheduled <= limit else None
        kept[uid] = engine.Progress(last, tuple(inputs.bounded_times(progress.in_flight, limit=limit)[0]))
    return kept


class CheckpointStore(Protocol):
    async def read(self, shard: int) -> tuple[str | None, str]:
        """(content or None, resourceVersion or "")."""

    async def write(self, shard: int, content: str, version: str) -> str:
        """Creates or replaces (when ``version`` still holds); raises election.Conflict otherwise."""


class ProgressOf(Protocol):
    def __call__(self, key: ScheduleKey, *, records: bool = False) -> tuple[str, engine.Progress] | None:
        """A Schedule's uid and progress (``engine.Engine.progress``)."""


class Checkpointer:
    """Writes the checkpoints of the shards this replica owns, about once a second while they change."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        progress: ProgressOf,
        shard_of: Callable[[ScheduleKey], int],
        owns_shard: Callable[[int], bool],
        interval: float = 1.0,
        refresh: float = 60.0,
        on_write: Callable[[int, int], None] | None = None,
    ) -> None:
        self._store = store
        self._progress = progress
        self._shard_of = shard_of
        self._owns_shard = owns_shard
        self._interval = interval
        self._refresh = refresh
        """Seconds after which an owned shard's checkpoint is written again, changed or not."""
        self._written_at: dict[int, float] = {}
        self._on_write = on_write
        self._members: defaultdict[int, set[ScheduleKey]] = defaultdict(set)
        self._shards: dict[ScheduleKey, int] = {}
        self._dirty: set[int] = set()
        self._versions: dict[int, str] = {}
        self._loaded: dict[int, dict[str, engine.Progress]] = {}
        self._task: asyncio.Task[None] | None = None
        self.oversized: set[int] = set()
        self._finals: dict[int, tuple[str, dict[str, ScheduleKey], list[str]]] = {}
        self._fragments: defaultdict[int, dict[ScheduleKey, str]] = defaultdict(dict)
        """Each owned shard's entries as last rendered, by Schedule. A write renders again only the entries of
        the Schedules changed since (and ``REVISIT`` more): with 12,000 Schedules in a shard, rendering them
        all every second would hold the event loop, and so the runs due, for a tenth of a second each time."""
        self._stale: defaultdict[int, set[ScheduleKey]] = defaultdict(set)
        self._revisits: defaultdict[int, deque[ScheduleKey]] = defaultdict(deque)

    def track(self, key: ScheduleKey) -> None:
        shard = self._shards.get(key)
        if shard is None:
            shard = self._shards[key] = self._shard_of(key)
            self._members[shard].add(key)
        if self._owns_shard(shard):  # its uid may be new: a Schedule deleted and created again
            self._stale[shard].add(key)

    def forget(self, key: ScheduleKey) -> None:
        shard = self._shards.pop(key, None)
        if shard is not None:
            self._members[shard].discard(key)
            self._fragments[shard].pop(key, None)
            self._stale[shard].discard(key)
            self._dirty.add(shard)

    def changed(self, key: ScheduleKey) -> None:
        self.track(key)
        self._dirty.add(self._shards[key])

    def keys(self, shard: int) -> list[ScheduleKey]:
        return sorted(self._members.get(shard, ()))

    async def load(self, shard: int) -> dict[str, engine.Progress]:
        """The shard's checkpoint, read when the shard is acquired.

        The new owner writes it back at once, from what it believes (see
        ``_write``): a checkpoint someone damaged, made oversized or deleted is
        the owner's own again within a second of the takeover.
        """
        content, version = await self._store.read(shard)
        self._versions[shard] = version
        self._written_at[shard] = time.monotonic()
        self._loaded[shard], unreadable = read_entries(content)
        if unreadable:
            log.warning("checkpoint of shard %d: %d unreadable entries dropped", shard, unreadable)
        self._render_all(shard)
        return self._loaded[shard]

    async def hand_over(self, shard: int) -> None:
        """Writes a shard's final checkpoint as it is given up: this replica no longer acts for it, and still
        holds its Lease, so the write is its last word on the shard and the next owner's first. It carries
        the run records no status write has yet, so the replica need not write them before it lets go. A
        checkpoint ``render_finals`` rendered at a stop is written as it is."""
        await self._write(shard, handing_over=True)

    def render_finals(self, owned: Callable[[int], bool]) -> list[ScheduleKey]:
        """Renders the final checkpoints of the ``owned`` shards at a stop, once the engine has stopped (so
        nothing changes them any more), and returns the Schedules whose unwritten run records they have no
        room for: their statuses are written before the shards are handed over. Rendered once here, they
        are not rendered again while the Leases wait to be released."""
        self._finals.clear()
        over: list[ScheduleKey] = []
        for shard in sorted(self._members):
            if owned(shard):
                self._finals[shard] = _, keys, dropped = self._content(shard, records=True)
                over += [keys[uid] for uid in dropped]
        return over

    def _content(self, shard: int, *, records: bool) -> tuple[str, dict[str, ScheduleKey], list[str]]:
        """The shard's checkpoint; with ``records``, with as many Schedules' unwritten run records as fit,
        and the uids of those that do not. Only a final checkpoint, or one that still carries what was read at
        the takeover, is rendered whole, with the uids of the Schedules it has; any other is rendered from
        the entries kept, and names none."""
        if not records and not self._loaded.get(shard):
            return self._rendered(shard), {}, []
        progress: dict[str, engine.Progress] = {}
        keys: dict[str, ScheduleKey] = {}
        for key in self.keys(shard):
            entry = self._progress(key, records=records)
            if entry is not None:
                progress[entry[0]], keys[entry[0]] = entry[1], key
        kept = believed(self._loaded.get(shard, {}), progress, now=engine.utcnow())
        dropped: list[str] = []
        packed: Packed = {}
        if records:
            packed = {uid: packed_records(uid, p.records) for uid, p in progress.items() if p.records}
            bare = {uid: dataclasses.replace(p, records=()) for uid, p in progress.items()}
            room = MAX_SIZE - len(encode(merge(kept, bare))) - RECORDS_OVERHEAD * len(packed)
            progress, dropped = fitting_records(progress, room, packed=packed)
        return encode(merge(kept, progress), packed=packed), keys, dropped

    def _rendered(self, shard: int) -> str:
        """The shard's checkpoint from its kept entries, rendering again those of the Schedules changed since
        the last write and the next ``REVISIT`` in turn."""
        fragments, revisits = self._fragments[shard], self._revisits[shard]
        if not revisits:
            revisits.extend(self._members[shard])
        again = [revisits.popleft() for _ in range(min(REVISIT, len(revisits)))]
        for key in (*self._stale.pop(shard, ()), *again):
            entry = self._progress(key) if self._shards.get(key) == shard else None
            if entry is not None and (fragment := _fragment(*entry)):
                fragments[key] = fragment
            else:
                fragments.pop(key, None)
        return _joined(fragments.values())

    def _render_all(self, shard: int) -> None:
        """Every entry of the shard is rendered again at the next write: the engine's progress of all of them
        changes at a takeover."""
        self._fragments[shard].clear()
        self._revisits[shard].clear()
        self._stale[shard] = set(self._members[shard])
        self._dirty.add(shard)

    def adopted(self, shard: int) -> None:
        """The engine has taken the shard's Schedules over from the loaded checkpoint, checking every entry:
        from now on the engine's own progress is the shard's, and nothing read is written back unchecked."""
        self._loaded.pop(shard, None)
        self._render_all(shard)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stops the periodic writes. A graceful handover writes nothing here: each shard's final checkpoint
        (``hand_over``) is written as the election releases it, all shards at once, and a write here first
        would only hold the releases back by a request per shard."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.refresh_due()
            await self.flush()

    def refresh_due(self) -> None:
        """Marks the owned shards not written for ``refresh`` seconds, changed or not: a checkpoint someone
        deleted or edited while its Schedules were quiet is the owner's own again within that time, at one
        write per shard per ``refresh`` seconds."""
        now = time.monotonic()
        for shard, written in self._written_at.items():
            if now - written >= self._refresh and self._owns_shard(shard):
                self._dirty.add(shard)

    async def flush(self) -> None:
        for shard in sorted(self._dirty):
            if not self._owns_shard(shard):
                continue
            self._dirty.discard(shard)
            try:
                await self._write(shard)
            except Exception as error:
                log.warning("checkpoint of shard %d not written (%s); retrying", shard, _brief(error))
                self._dirty.add(shard)

    async def _write(self, shard: int, *, handing_over: bool = False) -> None:
        loaded = self._loaded.get(shard, {})
        final = self._finals.pop(shard, None) if handing_over else None
        content, keys, dropped = final or self._content(shard, records=handing_over)
        if dropped:
            log.warning(
                "final checkpoint of shard %d: no room for the run records of %d Schedules; their statuses "
                "lack them", shard, len(dropped),
            )  # fmt: skip
        if len(content) > MAX_SIZE:
            if shard not in self.oversized:
                log.error(
                    "checkpoint of shard %d is %d bytes, above the %d an object may hold: not written; "
                    "failovers fall back on status (use more --shards)",
                    shard, len(content), MAX_SIZE,
                )  # fmt: skip
            self.oversized.add(shard)
            return
        self.oversized.discard(shard)
        if not handing_over and not self._owns_shard(shard):  # fenced while rendering: the new owner writes it
            return
        try:
            self._versions[shard] = await self._store.write(shard, content, self._versions.get(shard, ""))
        except election.Conflict:
            # Written meanwhile (a late write of a previous owner): keep the newest of both, next round.
            theirs, self._versions[shard] = await self._store.read(shard)
            self._loaded[shard] = merge(self._loaded.get(shard, {}), decode(theirs))
            self._dirty.add(shard)
            return
        self._loaded[shard] = {}
        self._written_at[shard] = time.monotonic()
        if (ignored := len(set(loaded) - set(keys))) > 0:
            log.warning(
                "checkpoint of shard %d: %d entries of no Schedule of the shard (deleted, or written by someone "
                "else) not written back", shard, ignored,
            )  # fmt: skip
        if self._on_write is not None:
            self._on_write(shard, len(content))


class KubeCheckpoints(kubeapi.ElectionStore):
    """``CheckpointStore`` on ConfigMaps in the operator's namespace."""

    api_class = k8s.CoreV1Api

    def _name(self, shard: int) -> str:
        return f"{self._prefix}-checkpoint-{shard}"

    async def read(self, shard: int) -> tuple[str | None, str]:
        await self._take("checkpoint")
        try:
            config_map = await self._api.read_namespaced_config_map(
                self._name(shard), self.namespace, _request_timeout=self._timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None, ""
            raise
        return (config_map.data or {}).get(KEY), str(config_map.metadata.resource_version)

    async def write(self, shard: int, content: str, version: str) -> str:
        await self._take("checkpoint")
        name = self._name(shard)
        body = k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(
                name=name, namespace=self.namespace, labels={"schedulezero.io/checkpoint": "true"}
            ),
            data={KEY: content},
        )
        try:
            if not version:
                written = await self._api.create_namespaced_config_map(
                    self.namespace, body, _request_timeout=self._timeout
                )
            else:
                body.metadata.resource_version = version
                written = await self._api.replace_namespaced_config_map(
                    name, self.namespace, body, _request_timeout=self._timeout
                )
        except ApiException as error:
            if error.status == 409:
                raise election.Conflict(name) from None
            if error.status == 404 and version:  # deleted by someone: the owner's checkpoint, so made again
                log.warning("checkpoint %s was deleted; writing it again", name)
                return await self.write(shard, content, "")
            raise
        return str(written.metadata.resource_version)
