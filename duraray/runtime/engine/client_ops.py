"""The client operations of a partition, and how their replies are kept.

``ClientOps.on_request`` serves a client request inside a batch, through a table of
handlers by operation name, so its effects commit with the batch and its reply is
released only after that commit. Mutating requests carry a request id; their replies are
stored in the ``dedup`` database so that a retried request gets the same answer without
being applied twice (``requests.py`` holds the argument rules and the reply encoding).
Waits are parked in ``Waits`` and answered when the instance changes (or with
TimeoutError at their deadline).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from duraray import _limits
from duraray._errors import (
    DurableError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    PartitionFailureError,
    SerializationError,
)
from duraray.entities.scheduler import EntityRecord
from duraray.orchestrations import history as h
from duraray.runtime.engine import records as r
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.entity_host import EntityHost
from duraray.runtime.engine.episodes import Episodes
from duraray.runtime.engine.instances import InstanceTable
from duraray.runtime.engine.lifecycle import Lifecycle
from duraray.runtime.engine.listings import Listings
from duraray.runtime.engine.poison import ParkedItems
from duraray.runtime.engine.records import (
    BlockingReport,
    ClientRequest,
    InstanceRecord,
    ParkedItem,
    Reply,
    ReuseIdPolicy,
)
from duraray.runtime.engine.requests import (
    DEFERRED,
    MUTATING_OPS,
    UNBATCHABLE,
    check_args,
    decode_reply,
    encode_reply,
    is_mutating,
)
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.engine.store import PartitionStore
from duraray.runtime.engine.timers import Timers
from duraray.runtime.engine.waits import WaitGroup, Waits, Watcher, wait_satisfied
from duraray.runtime.engine.watchdog import EpisodeWatch

__all__ = ["MUTATING_OPS", "ClientOps", "ReuseIdPolicy"]

Status = h.OrchestrationStatus
log = structlog.get_logger("duraray.partition")

#: Stored replies deleted per batch at most, and how often a partition looks for them.
PRUNE_BATCH = 2000
PRUNE_EVERY_MICROS = 10_000_000

Handler = Callable[..., Any]


@functools.cache
def _params(handler: Callable[..., Any]) -> tuple[frozenset[str], frozenset[str]]:
    """The arguments a handler takes, and those it must get (after ``b`` and ``req``), so
    a wrong one is refused with the operation's name rather than a handler's. Read once
    per handler function, not per core: a core is rebuilt after a failed batch."""
    params = list(inspect.signature(handler).parameters.values())[3:]  # self, b, req
    return (
        frozenset(p.name for p in params),
        frozenset(p.name for p in params if p.default is inspect.Parameter.empty),
    )


class ClientOps:
    """Client requests of a partition (see the module docstring)."""

    def __init__(
        self,
        *,
        index: int,
        partitions: int,
        request_dedup_seconds: float,
        store: PartitionStore,
        table: InstanceTable,
        episodes: Episodes,
        lifecycle: Lifecycle,
        entities: EntityHost,
        timers: Timers,
        waits: Waits,
        counters: dict[str, float],
        stats: Callable[[], dict[str, Any]],
        parked: ParkedItems,
        watch: EpisodeWatch,
    ) -> None:
        self._index = index
        self._partitions = partitions
        self._dedup_seconds = request_dedup_seconds
        self._store = store
        self._table = table
        self._listings = Listings(store, table)
        self._episodes = episodes
        self._lifecycle = lifecycle
        self._entities = entities
        self._timers = timers
        self._waits = waits
        self._counters = counters
        self._stats_of_partition = stats
        self._parked_items = parked
        self._watch = watch
        #: when to look for expired request replies next (UTC micros)
        self.next_prune = 0
        self._handlers: dict[str, Handler] = {
            "start": self._start,
            "batch": self._batch,
            "wait": self._wait,
            "wait_many": self._wait_many,
            "get_state": self._get_state,
            "get_history": self._get_history,
            "raise_event": self._raise_event,
            "terminate": self._terminate,
            "suspend": self._suspend,
            "resume": self._resume,
            "rewind": self._rewind,
            "purge": self._purge,
            "purge_by": self._purge_by,
            "query": self._listings.query,
            "count": self._listings.count,
            "stats": self._stats,
            "parked": self._parked,
            "blocking_report": self._blocking_report,
            "signal_entity": self._signal_entity,
            "get_entity": self._get_entity,
            "query_entities": self._query_entities,
            "clean_entities": self._clean_entities,
            "release_entity_lock": self._release_entity_lock,
        }

    # -- the request ------------------------------------------------------------------------

    def on_request(self, b: Batch, req: ClientRequest) -> None:
        """Apply ``req`` (once per request id) and queue its reply in the batch."""
        if req.request_id is not None:
            if req.request_id in b.replied:  # a retry queued behind the original
                b.fx.replies.append((req.reply_to, b.replied[req.request_id]))
                return
            stored = self._store.get("dedup", r.dedup_request_key(req.request_id))
            if stored is not None:
                b.fx.replies.append((req.reply_to, decode_reply(stored)))
                return
        try:
            result = self._call(b, req, req.op, req.args)
        except (DurableError, ValueError, TypeError, LookupError) as exc:
            result = Reply(exc)
        except Exception as exc:
            if is_mutating(req):
                raise  # it may have changed memory: the batch is isolated (poison.py)
            # A read changed nothing: answer it here, no rebuild needed.
            log.error("a read failed inside the partition", op=req.op, exc_info=exc)
            result = Reply(
                PartitionFailureError(
                    f"operation {req.op!r} failed inside the partition: {type(exc).__name__}: {exc}"
                )
            )
        if result is DEFERRED:
            return
        if req.request_id is not None and is_mutating(req):
            try:
                stored = encode_reply(result)
            except SerializationError:
                # A reply that cannot be stored must not take the batch down: the request
                # is applied and answered; only its retry dedup is lost.
                log.warning("reply not stored for request-id dedup", op=req.op)
            else:
                b.wb.put("dedup", r.dedup_request_key(req.request_id), stored)
                # Clamped: a clock before 1970 (a test clock) cannot be a u64 key.
                stored_at = max(0, b.now_micros)
                b.wb.put("dedup", r.dedup_expiry_key(stored_at, req.request_id), b"")
                b.replied[req.request_id] = result
        b.fx.replies.append((req.reply_to, result))

    def read(self, op: str, args: dict[str, Any]) -> Any:
        """Answer a read of ``OFF_BATCH_READS`` from committed data, on the caller's
        thread: a shell calls it beside the batch loop, so a long listing neither waits
        for batches nor delays their writes. Records come from the store (what the last
        commit left), each as of one read. Errors come back as a ``Reply``, as from
        ``on_request``."""
        try:
            if op not in OFF_BATCH_READS:
                raise ValueError(f"operation {op!r} is not served off the batch")
            return self._call(None, None, op, args)
        except (DurableError, ValueError, TypeError, LookupError) as exc:
            return Reply(exc)
        except Exception as exc:
            log.error("a read failed beside the partition's batches", op=op, exc_info=exc)
            return Reply(
                PartitionFailureError(
                    f"operation {op!r} failed inside the partition: {type(exc).__name__}: {exc}"
                )
            )

    def _call(
        self, b: Batch | None, req: ClientRequest | None, op: str, args: dict[str, Any]
    ) -> Any:
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            raise ValueError(f"unknown client operation {op!r}")
        accepted, required = _params(getattr(handler, "__func__", handler))
        unknown = sorted(set(args) - accepted)
        if unknown:
            raise TypeError(f"operation {op!r} got unexpected arguments {unknown}")
        missing = sorted(required - set(args))
        if missing:
            raise TypeError(f"operation {op!r} is missing arguments {missing}")
        check_args(args)
        self._check_owner(args)
        return handler(b, req, **args)

    def prune_request_replies(self, b: Batch) -> None:
        """Delete stored replies older than ``request_dedup_seconds`` (oldest first, at
        most ``PRUNE_BATCH`` per batch, and only every few seconds) so request-id dedup
        does not grow the store without end."""
        now = b.now_micros
        if now < self.next_prune <= now + PRUNE_EVERY_MICROS:
            return  # (a clock set back by more than the pause looks again at once)
        horizon = now - int(self._dedup_seconds * 1_000_000)
        if horizon < 0:  # nothing can be that old yet
            self.next_prune = now + PRUNE_EVERY_MICROS
            return
        expired = self._store.scan(
            "dedup", prefix=b"t", stop=r.dedup_expiry_bound(horizon + 1), limit=PRUNE_BATCH
        )
        for key, _ in expired:
            b.wb.delete("dedup", key)
            b.wb.delete("dedup", r.dedup_request_key(key[9:].decode()))
        self._counters["request_replies_pruned"] = self._counters.get(
            "request_replies_pruned", 0
        ) + len(expired)
        # Straight on while a backlog remains, else look again a while later.
        self.next_prune = now + (0 if len(expired) == PRUNE_BATCH else PRUNE_EVERY_MICROS)

    def _check_owner(self, args: dict[str, Any]) -> None:
        """Refuse an id that another partition owns: a misrouted request would otherwise
        create an instance (or entity) that no client could find."""
        key = args.get("instance_id") or args.get("entity_id")
        if isinstance(key, str):
            owner = partition_for(key, self._partitions)
            if owner != self._index:
                raise ValueError(
                    f"{key!r} belongs to partition {owner}, not {self._index}: the request "
                    "was routed to the wrong partition"
                )

    # -- orchestration instances --------------------------------------------------------------

    def _start(
        self,
        b: Batch,
        req: ClientRequest,
        *,
        instance_id: str,
        name: str,
        input: bytes | None = None,
        version: str | None = None,
        tags: dict[str, str] | None = None,
        start_at: datetime | timedelta | None = None,
        reuse_policy: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> str:
        when = None
        if start_at is not None:  # a delay is from now, on this partition's clock
            when = _limits.resolve_time(start_at, b.now, "start_at")
        policy = reuse_policy or ReuseIdPolicy.ERROR_IF_RUNNING
        if policy not in ReuseIdPolicy.ALL:
            raise ValueError(f"unknown reuse_id_policy {policy!r}")
        existing = self._table.get_record(instance_id)
        if existing is not None:
            running = existing.status.is_running
            if policy == ReuseIdPolicy.ERROR or (
                running and policy == ReuseIdPolicy.ERROR_IF_RUNNING
            ):
                raise InstanceAlreadyExistsError(
                    f"an orchestration instance with id {instance_id!r} already exists "
                    f"({existing.status.value})"
                )
            if running and policy == ReuseIdPolicy.IGNORE_IF_RUNNING:
                return instance_id
            live = self._table.get(instance_id)
            if running and live is not None:  # TERMINATE_IF_RUNNING
                self._lifecycle.terminate(b, live, None, recursive=True)
        self._episodes.create(
            b, instance_id, name, input, version=version, tags=tags, start_at=when, trace=trace
        )
        return instance_id

    def _batch(
        self, b: Batch, req: ClientRequest, *, ops: list[tuple[str, dict[str, Any]]]
    ) -> list[Any]:
        """Several operations in one request (one Ray call, one commit); results in order.

        A failing operation yields a ``Reply`` in its slot and does not stop the others.
        """
        results: list[Any] = []
        for op, args in ops:
            try:
                if not isinstance(op, str) or op in UNBATCHABLE or op not in self._handlers:
                    raise ValueError(f"operation {op!r} cannot be batched")
                results.append(self._call(b, req, op, args))
            except (DurableError, ValueError, TypeError, LookupError) as exc:
                results.append(Reply(exc))
        return results

    def _wait(
        self, b: Batch, req: ClientRequest, *, instance_id: str, kind: str, timeout: float
    ) -> Any:
        record = self._table.get_record(instance_id)
        if record is not None and wait_satisfied(kind, record):
            return replace(record)
        self._waits.add(instance_id, Watcher(kind, req.reply_to, b.mono + timeout))
        return DEFERRED

    def _wait_many(
        self, b: Batch, req: ClientRequest, *, instance_ids: list[str], kind: str, timeout: float
    ) -> Any:
        """Reply once every instance satisfies the wait (records in the given order)."""
        group = WaitGroup(list(instance_ids), req.reply_to, kind)
        deadline = b.mono + timeout
        for iid in group.pending_ids():
            record = self._table.get_record(iid)
            if record is not None and wait_satisfied(kind, record):
                group.satisfy(iid, record)
            else:
                self._waits.add(iid, Watcher(kind, group, deadline))
        if group.done:
            return group.results()
        return DEFERRED

    def _get_state(
        self, b: Batch, req: ClientRequest, *, instance_id: str, fetch_payloads: bool = True
    ) -> InstanceRecord | None:
        record = self._table.get_record(instance_id)
        if record is None:
            return None
        if not fetch_payloads:
            return replace(record, input=None, output=None, custom_status=None)
        return replace(record)

    def _get_history(
        self, b: Batch, req: ClientRequest, *, instance_id: str
    ) -> list[h.HistoryEvent]:
        if self._table.get_record(instance_id) is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        return self._table.load_history(instance_id)

    def _raise_event(
        self,
        b: Batch,
        req: ClientRequest,
        *,
        instance_id: str,
        name: str,
        data: bytes | None = None,
    ) -> None:
        live = self._table.require_live(instance_id, "raise an event on")
        event = h.EventRaised(timestamp=b.now, name=name, input=data)
        self._episodes.deliver(b, live.record.instance_id, event, None)

    def _terminate(
        self,
        b: Batch,
        req: ClientRequest,
        *,
        instance_id: str,
        output: bytes | None = None,
        recursive: bool = True,
    ) -> bool:
        live = self._table.get(instance_id)
        if live is None:
            if self._table.get_record(instance_id) is None:
                raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
            return False  # terminal already: a no-op
        self._lifecycle.terminate(b, live, output, recursive)
        return True

    def _suspend(
        self, b: Batch, req: ClientRequest, *, instance_id: str, reason: str | None = None
    ) -> bool:
        table = self._table
        live = table.require_live(instance_id, "suspend")
        record = live.record
        if record.status is Status.SUSPENDED:
            return False
        table.append_history(b, live, [h.ExecutionSuspended(timestamp=b.now, reason=reason)])
        record.status = Status.SUSPENDED
        live.buffering = True
        # Events taken for this batch's episode wait for resume too, ahead of the ones
        # buffered after them: an episode of the suspended instance could otherwise run
        # (and a continue-as-new in it would make it RUNNING and overwrite those rows).
        for event in b.work.pop(instance_id, []):
            table.to_inbox(b, live, event)
        table.unmark_ready(instance_id)
        table.touch(b, live)
        return True

    def _resume(
        self, b: Batch, req: ClientRequest, *, instance_id: str, reason: str | None = None
    ) -> bool:
        table = self._table
        live = table.require_live(instance_id, "resume")
        record = live.record
        if record.status is not Status.SUSPENDED:
            return False
        table.append_history(b, live, [h.ExecutionResumed(timestamp=b.now, reason=reason)])
        rows = (self._timers.get(key) for key in live.timers)
        if any(row is not None and row.kind == "start" for row in rows):
            record.status = Status.PENDING  # its delayed start is still ahead
        else:
            record.status = Status.RUNNING
            # Drained next batch, after this one commits, so buffered events keep their order.
            table.mark_ready(instance_id)
        table.touch(b, live)
        return True

    def _rewind(
        self, b: Batch, req: ClientRequest, *, instance_id: str, reason: str | None = None
    ) -> None:
        record = self._table.get_record(instance_id)
        if record is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        if record.status is not Status.FAILED:
            raise InstanceStateError(
                f"only FAILED instances can be rewound; {instance_id!r} is {record.status.value}"
            )
        self._lifecycle.rewind(b, instance_id, reason)

    def _purge(self, b: Batch, req: ClientRequest, *, instance_id: str) -> tuple[int, list[str]]:
        record = self._table.get_record(instance_id)
        if record is None or not record.status.is_terminal:
            return (0, [])
        children = self._table.children_of(b, instance_id)
        self._lifecycle.delete(b, record)
        return (1, children)

    def _purge_by(
        self,
        b: Batch,
        req: ClientRequest,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        statuses: list[str] | None = None,
    ) -> int:
        wanted = {Status(s) for s in statuses} if statuses else None
        count = 0
        load = self._listings.load(b)
        for record in list(
            self._listings.scan_records(load, created_from, created_to, None, None, False)
        ):
            if not record.status.is_terminal:
                continue
            if wanted is not None and record.status not in wanted:
                continue
            self._lifecycle.delete(b, record)
            count += 1
        return count

    def _stats(self, b: Batch, req: ClientRequest) -> dict[str, Any]:
        return self._stats_of_partition()

    def _blocking_report(
        self, b: Batch, req: ClientRequest, *, instance_id: str
    ) -> BlockingReport | None:
        return self._watch.report(instance_id)

    def _parked(
        self, b: Batch, req: ClientRequest, *, after: bytes | None = None, limit: int = 100
    ) -> list[tuple[bytes, ParkedItem]]:
        return self._parked_items.list(after, limit)

    # -- entities ---------------------------------------------------------------------------

    def _signal_entity(
        self,
        b: Batch,
        req: ClientRequest,
        *,
        entity_id: str,
        operation: str,
        input: bytes | None = None,
        signal_time: datetime | timedelta | None = None,
        trace: dict[str, str] | None = None,
    ) -> None:
        self._entities.signal(
            b,
            entity_id=entity_id,
            operation=operation,
            input=input,
            signal_time=signal_time,
            trace=trace,
        )

    def _get_entity(
        self, b: Batch, req: ClientRequest, *, entity_id: str, include_state: bool = True
    ) -> EntityRecord | None:
        return self._entities.get(entity_id=entity_id, include_state=include_state)

    def _query_entities(
        self,
        b: Batch,
        req: ClientRequest,
        *,
        prefix: str = "@",
        after: str | None = None,
        limit: int = 100,
        include_state: bool = True,
    ) -> list[EntityRecord]:
        return self._entities.query(
            prefix=prefix, after=after, limit=limit, include_state=include_state
        )

    def _clean_entities(
        self, b: Batch, req: ClientRequest, *, remove_empty: bool = True
    ) -> tuple[int, list[tuple[str, str, str]]]:
        return self._entities.clean(b, remove_empty=remove_empty)

    def _release_entity_lock(
        self, b: Batch, req: ClientRequest, *, entity_id: str, owner: str
    ) -> bool:
        return self._entities.release_lock(b, entity_id=entity_id, owner=owner)


#: Reads a shell may answer off the batch thread, from committed data (``ClientOps.read``).
OFF_BATCH_READS = frozenset({"query", "count"})
