"""The client operations of a partition, and how their replies are kept.

Mixed into ``PartitionCore``: each ``_op_<name>`` method serves the client request
``<name>`` inside a batch, so its effects commit with the batch and its reply is released
only after that commit. Mutating requests carry a request id; their replies are stored
in the ``dedup`` database so that a retried request gets the same answer without being
applied twice. Waits are parked as watchers and answered when the instance changes (or
with TimeoutError at their deadline).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from duraray import _limits
from duraray._errors import (
    DurableError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    SerializationError,
)
from duraray.entities.ids import EntityId
from duraray.orchestrations import history as h
from duraray.orchestrations.ids import validate_instance_id
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.records import ClientRequest, InstanceRecord, Reply, ReuseIdPolicy
from duraray.runtime.engine.routing import partition_for

Status = h.OrchestrationStatus
log = structlog.get_logger("duraray.partition")

if TYPE_CHECKING:
    from duraray.runtime.engine.lifecycle import LiveInstance as _Live

#: Stored replies deleted per batch at most, and how often a partition looks for them.
PRUNE_BATCH = 2000
PRUNE_EVERY_MICROS = 10_000_000

#: Client operations that change state: their replies are stored for request-id dedup.
MUTATING_OPS = frozenset(
    {
        "start",
        "raise_event",
        "terminate",
        "suspend",
        "resume",
        "rewind",
        "purge",
        "purge_by",
        "batch",
        "signal_entity",
        "clean_entities",
        "release_entity_lock",
    }
)


@dataclass(slots=True)
class _Watcher:
    kind: str  # "start" | "completion"
    reply_to: Any
    deadline: float


_DEFERRED: Any = object()


_UNBATCHABLE = frozenset({"batch", "wait", "wait_many"})

#: The types client operations accept for their arguments (None is always accepted).
_ARG_TYPES: dict[str, tuple[type, ...]] = {
    "instance_id": (str,),
    "entity_id": (str,),
    "name": (str,),
    "operation": (str,),
    "kind": (str,),
    "prefix": (str,),
    "reason": (str,),
    "input": (bytes,),
    "data": (bytes,),
    "output": (bytes,),
    "after": (bytes, str),
    "created_from": (datetime,),
    "created_to": (datetime,),
    "start_at": (datetime, timedelta),
    "signal_time": (datetime, timedelta),
    "statuses": (list, tuple),
    "timeout": (int, float),
    "limit": (int,),
    "instance_ids": (list, tuple),
    "ops": (list, tuple),
}

#: The value checks of ``duraray._limits`` per argument: a value of the right type can
#: still fail a batch (a time before 1970 has no key; an id too long for one).
_ARG_CHECKS: dict[str, Any] = {
    "instance_id": validate_instance_id,
    "entity_id": EntityId.parse,
    "name": lambda v: _limits.check_name(v, "name"),
    "operation": lambda v: _limits.check_name(v, "entity operation"),
    "reason": lambda v: _limits.check_text(v, "reason"),
    "version": lambda v: _limits.check_text(v, "version"),
    "prefix": lambda v: _limits.check_text(v, "prefix"),
    "tags": _limits.check_tags,
    "created_from": lambda v: _limits.check_time(v, "created_from"),
    "created_to": lambda v: _limits.check_time(v, "created_to"),
    "start_at": lambda v: _check_when(v, "start_at"),
    "signal_time": lambda v: _check_when(v, "signal_time"),
    "timeout": _limits.check_timeout,
    "limit": lambda v: _limits.check_page_size(v, "limit"),
    "after": lambda v: _check_after(v),
    "instance_ids": lambda v: [validate_instance_id(i) for i in v],
}


def _check_when(value: Any, what: str) -> Any:
    if isinstance(value, timedelta):
        return _limits.check_duration(value, what)
    return _limits.check_time(value, what)


def _check_after(value: bytes | str) -> None:
    size = len(value) if isinstance(value, bytes) else _limits.utf8_size(value, "token")
    if size >= _limits.MAX_STORE_KEY_BYTES:
        raise ValueError("malformed continuation token: longer than any key")


class _WaitGroup:
    """A ``wait_many`` request: replies when its last instance is satisfied."""

    def __init__(self, instance_ids: list[str], reply_to: Any, kind: str) -> None:
        self.order = instance_ids
        self.unique = len(set(instance_ids))  # computed once: done is checked per completion
        self.reply_to = reply_to
        self.kind = kind
        self.records: dict[str, InstanceRecord] = {}
        self.expired = False

    def pending_ids(self) -> list[str]:
        return [i for i in dict.fromkeys(self.order) if i not in self.records]

    def satisfy(self, instance_id: str, record: InstanceRecord) -> None:
        self.records[instance_id] = record

    @property
    def done(self) -> bool:
        return len(self.records) == self.unique

    def results(self) -> list[InstanceRecord]:
        return [self.records[i] for i in self.order]


def _wait_satisfied(kind: str, record: InstanceRecord) -> bool:
    if kind == "start":
        return record.status is not Status.PENDING
    return record.status.is_terminal


def _is_mutating(req: ClientRequest) -> bool:
    """True if the request changes state (a batch: if any of its operations does)."""
    if req.op == "batch":
        return any(op in MUTATING_OPS for op, _ in req.args.get("ops", ()))
    return req.op in MUTATING_OPS


def _encode_reply(result: Any) -> bytes:
    if isinstance(result, list) and any(isinstance(item, Reply) for item in result):
        return codec.encode({"batch": [codec.decode(_encode_reply(item)) for item in result]})
    if isinstance(result, Reply):
        return codec.encode({"error": type(result.error).__name__, "message": str(result.error)})
    if isinstance(result, InstanceRecord):
        return codec.encode({"ok": None})
    return codec.encode({"ok": result})


_REPLY_ERRORS: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (
        InstanceAlreadyExistsError,
        InstanceNotFoundError,
        InstanceStateError,
        ValueError,
        TypeError,
        DurableError,
    )
}


def _decode_reply(data: bytes) -> Any:
    stored = codec.decode(data)
    if "batch" in stored:
        return [_decode_reply(codec.encode(item)) for item in stored["batch"]]
    if "error" in stored:
        cls = _REPLY_ERRORS.get(stored["error"], DurableError)
        return Reply(cls(stored["message"]))
    value = stored["ok"]
    return tuple(value) if isinstance(value, list) else value


class ClientOps:
    """Client requests of a partition (mixed into PartitionCore)."""

    def _on_request(self, req: ClientRequest) -> None:
        if req.request_id is not None:
            if req.request_id in self._replied:  # a retry queued behind the original
                self._fx.replies.append((req.reply_to, self._replied[req.request_id]))
                return
            stored = self.store.get("dedup", r.dedup_request_key(req.request_id))
            if stored is not None:
                self._fx.replies.append((req.reply_to, _decode_reply(stored)))
                return
        handler = getattr(self, f"_op_{req.op}", None)
        try:
            if handler is None:
                raise ValueError(f"unknown client operation {req.op!r}")
            self._check_args(req.args)
            result = handler(req, **req.args)
        except (DurableError, ValueError, TypeError, LookupError) as exc:
            result = Reply(exc)
        if result is _DEFERRED:
            return
        if req.request_id is not None and _is_mutating(req):
            try:
                stored = _encode_reply(result)
            except SerializationError:
                # A reply that cannot be stored must not take the batch down: the request
                # is applied and answered; only its retry dedup is lost.
                log.warning("reply not stored for request-id dedup", op=req.op)
            else:
                self._wb.put("dedup", r.dedup_request_key(req.request_id), stored)
                # Clamped: a clock before 1970 (a test clock) cannot be a u64 key.
                stored_at = max(0, codec.utc_micros(self._now))
                self._wb.put("dedup", r.dedup_expiry_key(stored_at, req.request_id), b"")
                self._replied[req.request_id] = result
        self._fx.replies.append((req.reply_to, result))

    def _prune_request_replies(self) -> None:
        """Delete stored replies older than ``request_dedup_seconds`` (oldest first, at
        most ``PRUNE_BATCH`` per batch, and only every few seconds) so request-id dedup
        does not grow the store without end."""
        now = codec.utc_micros(self._now)
        if now < self._next_prune <= now + PRUNE_EVERY_MICROS:
            return  # (a clock set back by more than the pause looks again at once)
        horizon = now - int(self.config.request_dedup_seconds * 1_000_000)
        if horizon < 0:  # nothing can be that old yet
            self._next_prune = now + PRUNE_EVERY_MICROS
            return
        expired = self.store.scan(
            "dedup", prefix=b"t", stop=r.dedup_expiry_bound(horizon + 1), limit=PRUNE_BATCH
        )
        for key, _ in expired:
            self._wb.delete("dedup", key)
            self._wb.delete("dedup", r.dedup_request_key(key[9:].decode()))
        self.counters["request_replies_pruned"] = self.counters.get(
            "request_replies_pruned", 0
        ) + len(expired)
        # Straight on while a backlog remains, else look again a while later.
        self._next_prune = now + (0 if len(expired) == PRUNE_BATCH else PRUNE_EVERY_MICROS)

    def _check_args(self, args: dict[str, Any]) -> None:
        """Refuse malformed arguments before a handler runs: a handler that failed halfway
        with an unexpected error would fail the whole batch (and crash a Ray partition
        actor, again on every retry of the same request)."""
        for name, value in args.items():
            expected = _ARG_TYPES.get(name)
            if expected is not None and value is not None and not isinstance(value, expected):
                raise TypeError(
                    f"argument {name!r} must be {' or '.join(t.__name__ for t in expected)}, "
                    f"got {type(value).__name__}"
                )
        statuses = args.get("statuses")
        if statuses is not None and not all(isinstance(item, str) for item in statuses):
            raise TypeError("argument 'statuses' must be a list of status names")
        for name, value in args.items():
            check = _ARG_CHECKS.get(name)
            if check is not None and value is not None:
                check(value)
        self._check_owner(args)

    def _check_owner(self, args: dict[str, Any]) -> None:
        """Refuse an id that another partition owns: a misrouted request would otherwise
        create an instance (or entity) that no client could find."""
        key = args.get("instance_id") or args.get("entity_id")
        if isinstance(key, str) and partition_for(key, self.partition_count) != self.index:
            raise ValueError(
                f"{key!r} belongs to partition {partition_for(key, self.partition_count)}, "
                f"not {self.index}: the request was routed to the wrong partition"
            )

    def _get_record(self, instance_id: str) -> InstanceRecord | None:
        live = self._live.get(instance_id)
        if live is not None:
            return live.record
        data = self.store.get("instances", r.instance_key(instance_id))
        return None if data is None else codec.decode_record(InstanceRecord, data)

    def _require_live(self, instance_id: str, op: str) -> _Live:
        live = self._live.get(instance_id)
        if live is not None:
            return live
        record = self._get_record(instance_id)
        if record is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        raise InstanceStateError(
            f"cannot {op} instance {instance_id!r}: it is {record.status.value}"
        )

    def _op_start(
        self,
        req: ClientRequest,
        *,
        instance_id: str,
        name: str,
        input: bytes | None = None,
        version: str | None = None,
        tags: dict[str, str] | None = None,
        start_at: datetime | timedelta | None = None,
        reuse_policy: str | None = None,
    ) -> str:
        if start_at is not None:  # a delay is from now, on this partition's clock
            start_at = _limits.resolve_time(start_at, self._now, "start_at")
        policy = reuse_policy or ReuseIdPolicy.ERROR_IF_RUNNING
        if policy not in ReuseIdPolicy.ALL:
            raise ValueError(f"unknown reuse_id_policy {policy!r}")
        existing = self._get_record(instance_id)
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
            if running:  # TERMINATE_IF_RUNNING
                self._terminate(self._live[instance_id], None, recursive=True)
        self._create(instance_id, name, input, version=version, tags=tags, start_at=start_at)
        return instance_id

    def _op_batch(self, req: ClientRequest, *, ops: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Several operations in one request (one Ray call, one commit); results in order.

        A failing operation yields a ``Reply`` in its slot and does not stop the others.
        """
        results: list[Any] = []
        for op, args in ops:
            handler = getattr(self, f"_op_{op}", None)
            try:
                if handler is None or op in _UNBATCHABLE:
                    raise ValueError(f"operation {op!r} cannot be batched")
                self._check_args(args)
                results.append(handler(req, **args))
            except (DurableError, ValueError, TypeError, LookupError) as exc:
                results.append(Reply(exc))
        return results

    def _op_wait_many(
        self, req: ClientRequest, *, instance_ids: list[str], kind: str, timeout: float
    ) -> Any:
        """Reply once every instance satisfies the wait (records in the given order)."""
        group = _WaitGroup(list(instance_ids), req.reply_to, kind)
        deadline = time.monotonic() + timeout
        for iid in group.pending_ids():
            record = self._get_record(iid)
            if record is not None and _wait_satisfied(kind, record):
                group.satisfy(iid, record)
            else:
                self._add_watcher(iid, _Watcher(kind, group, deadline))
        if group.done:
            return group.results()
        return _DEFERRED

    def _op_get_state(
        self, req: ClientRequest, *, instance_id: str, fetch_payloads: bool = True
    ) -> InstanceRecord | None:
        record = self._get_record(instance_id)
        if record is None:
            return None
        if not fetch_payloads:
            return replace(record, input=None, output=None, custom_status=None)
        return replace(record)

    def _op_get_history(self, req: ClientRequest, *, instance_id: str) -> list[h.HistoryEvent]:
        if self._get_record(instance_id) is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        return self._load_history(instance_id)

    def _op_wait(self, req: ClientRequest, *, instance_id: str, kind: str, timeout: float) -> Any:
        record = self._get_record(instance_id)
        if record is not None and _wait_satisfied(kind, record):
            return replace(record)
        self._add_watcher(instance_id, _Watcher(kind, req.reply_to, time.monotonic() + timeout))
        return _DEFERRED

    def _op_raise_event(
        self, req: ClientRequest, *, instance_id: str, name: str, data: bytes | None = None
    ) -> None:
        live = self._require_live(instance_id, "raise an event on")
        event = h.EventRaised(timestamp=self._now, name=name, input=data)
        self._deliver(live.record.instance_id, event, None)

    def _op_terminate(
        self,
        req: ClientRequest,
        *,
        instance_id: str,
        output: bytes | None = None,
        recursive: bool = True,
    ) -> bool:
        live = self._live.get(instance_id)
        if live is None:
            if self._get_record(instance_id) is None:
                raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
            return False  # terminal already: a no-op
        self._terminate(live, output, recursive)
        return True

    def _op_suspend(
        self, req: ClientRequest, *, instance_id: str, reason: str | None = None
    ) -> bool:
        live = self._require_live(instance_id, "suspend")
        record = live.record
        if record.status is Status.SUSPENDED:
            return False
        self._append_history(live, [h.ExecutionSuspended(timestamp=self._now, reason=reason)])
        record.status = Status.SUSPENDED
        live.buffering = True
        # Events taken for this batch's episode wait for resume too, ahead of the ones
        # buffered after them: an episode of the suspended instance could otherwise run
        # (and a continue-as-new in it would make it RUNNING and overwrite those rows).
        for event in self._work.pop(instance_id, []):
            self._to_inbox(live, event)
        self._ready.discard(instance_id)
        self._touch(live)
        return True

    def _op_resume(
        self, req: ClientRequest, *, instance_id: str, reason: str | None = None
    ) -> bool:
        live = self._require_live(instance_id, "resume")
        record = live.record
        if record.status is not Status.SUSPENDED:
            return False
        self._append_history(live, [h.ExecutionResumed(timestamp=self._now, reason=reason)])
        waiting_for_start = any(
            self._timers[k].kind == "start" for k in live.timers if k in self._timers
        )
        if waiting_for_start:
            record.status = Status.PENDING
        else:
            record.status = Status.RUNNING
            # Drained next batch, after this one commits, so buffered events keep their order.
            self._ready.add(instance_id)
        self._touch(live)
        return True

    def _op_rewind(
        self, req: ClientRequest, *, instance_id: str, reason: str | None = None
    ) -> None:
        record = self._get_record(instance_id)
        if record is None:
            raise InstanceNotFoundError(f"no orchestration instance with id {instance_id!r}")
        if record.status is not Status.FAILED:
            raise InstanceStateError(
                f"only FAILED instances can be rewound; {instance_id!r} is {record.status.value}"
            )
        self._rewind(instance_id, reason)

    def _op_purge(self, req: ClientRequest, *, instance_id: str) -> tuple[int, list[str]]:
        record = self._get_record(instance_id)
        if record is None or not record.status.is_terminal:
            return (0, [])
        children = self._children_of(instance_id)
        self._delete_instance(record)
        return (1, children)

    def _op_purge_by(
        self,
        req: ClientRequest,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        statuses: list[str] | None = None,
    ) -> int:
        wanted = {Status(s) for s in statuses} if statuses else None
        count = 0
        for record in list(self._scan_records(created_from, created_to, None, None)):
            if not record.status.is_terminal:
                continue
            if wanted is not None and record.status not in wanted:
                continue
            self._delete_instance(record)
            count += 1
        return count

    def _op_query(
        self,
        req: ClientRequest,
        *,
        statuses: list[str] | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        prefix: str | None = None,
        after: bytes | None = None,
        limit: int = 100,
        fetch_payloads: bool = True,
    ) -> list[InstanceRecord]:
        wanted = {Status(s) for s in statuses} if statuses else None
        out: list[InstanceRecord] = []
        for record in self._scan_records(created_from, created_to, after, prefix):
            if wanted is not None and record.status not in wanted:
                continue
            if not fetch_payloads:
                record = replace(record, input=None, output=None, custom_status=None)
            out.append(record)
            if len(out) >= limit:
                break
        return out

    def _op_stats(self, req: ClientRequest) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for live in self._live.values():
            by_status[live.record.status.value] = by_status.get(live.record.status.value, 0) + 1
        return {
            "partition": self.index,
            "counters": dict(self.counters),
            "live_instances": by_status,
            "cached_executors": len(self._cached),
            "timers": len(self._timers),
            "activities_in_flight": sum(len(v.activities) for v in self._live.values()),
            # Activities of unknown cost waiting for a probe of their kind (dispatch.py).
            "activities_held": self.dispatch.held,
            "outbox": sum(len(b) for b in self._outbox.values()),
            "queue_depth": len(self._intake),
        }

    def _scan_records(
        self,
        created_from: datetime | None,
        created_to: datetime | None,
        after: bytes | None,
        prefix: str | None,
    ) -> Iterator[InstanceRecord]:
        start = r.u64(codec.utc_micros(created_from)) if created_from else None
        if after is not None and (start is None or after >= start):
            start = after + b"\x00"
        stop = r.u64(codec.utc_micros(created_to) + 1) if created_to else None
        for key, _ in self.store.scan("by_created", start=start, stop=stop):
            instance_id = key[8:].decode()
            if prefix and not instance_id.startswith(prefix):
                continue
            record = self._get_record(instance_id)
            if record is not None:
                yield record

    def _notify_watchers(self) -> None:
        if not self._watchers:
            # No wait left: no deadline either, or an idle partition would keep running
            # (empty) batches from the last wait's deadline on.
            self._watch_deadline = None
            return
        now = time.monotonic()
        sweep = self._watch_deadline is not None and self._watch_deadline <= now
        # Only instances that changed in this batch can satisfy a wait; every watcher is
        # visited only when some deadline has passed.
        candidates = (
            list(self._watchers)
            if sweep
            else [iid for iid in self._changed if iid in self._watchers]
        )
        for iid in candidates:
            watchers = self._watchers[iid]
            record = self._get_record(iid) if iid in self._changed else None
            keep = []
            for watcher in watchers:
                if record is not None and _wait_satisfied(watcher.kind, record):
                    group = watcher.reply_to
                    if isinstance(group, _WaitGroup):
                        group.satisfy(iid, replace(record))
                        if group.done:
                            self._fx.replies.append((group.reply_to, group.results()))
                        continue
                    self._fx.replies.append((watcher.reply_to, replace(record)))
                elif watcher.deadline > now:
                    keep.append(watcher)
                else:
                    # Expired: answer it, so no caller (or Ray call) waits forever.
                    self._expire(iid, watcher)
            if keep:
                self._watchers[iid] = keep
            else:
                del self._watchers[iid]
        if sweep or not self._watchers:
            self._watch_deadline = min(
                (w.deadline for ws in self._watchers.values() for w in ws), default=None
            )

    def _add_watcher(self, instance_id: str, watcher: _Watcher) -> None:
        self._watchers.setdefault(instance_id, []).append(watcher)
        if self._watch_deadline is None or watcher.deadline < self._watch_deadline:
            self._watch_deadline = watcher.deadline

    def _expire(self, instance_id: str, watcher: _Watcher) -> None:
        target = watcher.reply_to
        if isinstance(target, _WaitGroup):
            if target.expired:
                return
            target.expired = True
            pending = len(target.pending_ids())
            target = target.reply_to
            message = f"{pending} awaited instances did not reach the awaited state in time"
        else:
            message = f"instance {instance_id!r} did not reach the awaited state in time"
        self._fx.replies.append((target, Reply(TimeoutError(message))))
