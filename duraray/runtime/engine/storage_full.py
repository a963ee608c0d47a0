"""A batch whose commit did not fit: answer its callers, rebuild the core, keep going.

Mixed into ``PartitionCore``. When ``run_batch``'s commit fails for lack of space (the
disk is full, or the store reached ``max_map_size``: ``StorageFullError``), nothing of
the batch was written, but the batch had already changed the core's memory (live
generators advanced, sequence numbers taken, timers popped). That memory is thrown away:
``recover_from_storage_full`` builds a new core over the same store, which recovers from
it exactly as a restarted partition does (``PartitionCore.__init__``), and the shell
carries on with the new core instead of dying (a crash would only repeat the failure,
each restart re-running every pending activity).

What the failed batch had taken from the intake is dealt with as follows:

- state-changing client requests are answered with ``StorageFullError`` (a retried
  request id whose reply is stored still gets that reply): they were not applied;
- reads (states, histories, queries, waits, stats) are answered at once by the new core,
  from the committed state, with no commit: the partition keeps serving reads;
- messages from peers, their acks, activity results and resend requests are held back,
  then go back to the front of the intake when the back-off (below) ends, and a later
  batch applies them to the recovered state. That is as
  safe as the restart path, for the same reasons: messages are applied once by the dedup
  on (source, sequence) kept in the store, a result counts only while its stored
  ``activities`` row exists, an ack deletes only outbox rows. (A restart drops them
  instead and relies on peers resending unacknowledged messages after
  ``resend_interval`` and on recovery re-dispatching every pending activity; giving them
  back spares running activities again that have already run.)

Effects released by earlier batches are out (activities running, messages sent), so the
new core's own recovery effects, which would re-dispatch every pending activity and
resend the whole outbox, are replaced by what the failed batch had carried from an
earlier recovery and never released. Messages this partition held in memory because
they arrived out of order are dropped; their senders resend them. Waits registered by
earlier batches move to the new core.

Until a commit succeeds again the partition backs off: held work (the held-back items,
due timers, runnable instances) is retried after ``FULL_RETRY_MIN_S`` seconds, doubling
up to ``FULL_RETRY_MAX_S``, so a full disk is not hammered; a client request runs at
once, so writes fail fast (or succeed, once space is back) and reads answer. The items
held back stay out of those batches, so what did not fit does not make a small write
(a purge freeing space) fail with it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import structlog

from duraray._errors import StorageFullError
from duraray.runtime.engine import records as r
from duraray.runtime.engine.client_ops import _is_mutating, _WaitGroup, _Watcher
from duraray.runtime.engine.records import ClientRequest, Effects, Reply
from duraray.runtime.engine.store import WriteBatch

if TYPE_CHECKING:
    from duraray.runtime.engine.partition import PartitionCore

#: Seconds before held work is retried after the first failed commit, and at most.
FULL_RETRY_MIN_S = 0.5
FULL_RETRY_MAX_S = 8.0

log = structlog.get_logger("duraray.partition")


def copy_effects(fx: Effects) -> Effects:
    """A copy of ``fx`` whose lists and dicts are its own (the batch appends to the original)."""
    return Effects(
        replies=list(fx.replies),
        messages={d: list(m) for d, m in fx.messages.items()},
        acks=dict(fx.acks),
        activities=list(fx.activities),
        dispatches=list(fx.dispatches),
    )


class StorageFullRecovery:
    """Recovery from a commit that failed for lack of space (mixed into PartitionCore)."""

    def holding_back(self) -> bool:
        """True while held work waits for its retry after a commit that did not fit."""
        return _core(self)._hold_until > time.monotonic()

    def requests_queued(self) -> bool:
        """True if a client request waits in the intake (any thread may be appending)."""
        # list() copies the deque without running Python code in between, so a thread
        # appending meanwhile cannot break the iteration.
        return any(kind == "request" for kind, _ in list(_core(self)._intake))

    def recover_from_storage_full(self, error: StorageFullError) -> tuple[PartitionCore, Effects]:
        """After ``run_batch`` raised ``error``: a new core over the same store, recovered
        from it, taking over this core's intake, and the effects to release now (the
        answers to the failed batch's client requests). This core must not be used again.
        See the module docstring for what happens to each item of the failed batch."""
        return _recover(_core(self), error)

    def abandon_callers(self) -> list[Any]:
        """The callers this core holds and will now never answer, because its shell cannot
        go on: those of the batch that failed, of the queued requests and of the waits.
        Queued requests are taken out of the intake."""
        return _abandon_callers(_core(self))


def _core(mixin: StorageFullRecovery) -> PartitionCore:
    return cast("PartitionCore", mixin)


def storage_full_error(core: PartitionCore, cause: StorageFullError) -> StorageFullError:
    """The error the callers of a batch that did not fit get."""
    return StorageFullError(
        f"partition p{core.index} of hub {core.hub!r} could not commit: {cause}"
    )


def _caller(watcher: _Watcher) -> Any:
    target = watcher.reply_to
    return target.reply_to if isinstance(target, _WaitGroup) else target


def _recover(old: PartitionCore, error: StorageFullError) -> tuple[PartitionCore, Effects]:
    # Live generators ran ahead of the store: close them (as an eviction would).
    for live in old._live.values():
        if live.executor is not None:
            live.executor.close()
            live.executor = None
    old._cached.clear()

    core = type(old)(
        hub=old.hub,
        index=old.index,
        store=old.store,
        registry=old.registry,
        config=old.config,
        clock=old.clock,
    )
    # One intake shared by both cores: a thread still holding the old core (an activity
    # delivering its result) appends to the queue the new core drains.
    core._intake = old._intake
    core._pending_effects = old._carried if old._carried is not None else Effects()
    # Learned activity costs and the activities held for a probe stay (memory only, and
    # what they hold was released by committed batches); the costs are saved again.
    core.dispatch = old.dispatch
    core.dispatch.dirty = True
    core.counters = old._counters_before  # as they were before the failed batch
    core.counters["storage_full"] = core.counters.get("storage_full", 0) + 1
    core._costs_saved = old._costs_saved
    core._next_prune = old._next_prune
    core._full_failures = old._full_failures + 1
    delay = min(FULL_RETRY_MAX_S, FULL_RETRY_MIN_S * 2 ** (core._full_failures - 1))
    core._hold_until = time.monotonic() + delay

    requests: list[ClientRequest] = []
    give_back: list[tuple[str, Any]] = []
    for kind, item in old._taken:
        if kind == "request":
            requests.append(item)
        else:
            give_back.append((kind, item))
    core._held_back = old._held_back + give_back  # oldest first

    # Waits of earlier batches move over; those of the failed batch's requests are
    # registered again below, when the new core answers their requests.
    again = {id(req.reply_to) for req in requests}
    for iid, watchers in old._watchers.items():
        for watcher in watchers:
            if id(_caller(watcher)) not in again:
                core._add_watcher(iid, watcher)

    fx = _answer_without_commit(core, requests, str(error))
    log.warning(
        "partition could not commit: storage full; recovered from the store",
        hub=old.hub,
        partition=old.index,
        error=str(error),
        refused_requests=sum(isinstance(res, Reply) for _, res in fx.replies),
        given_back=len(give_back),
        retry_in_s=delay,
    )
    return core, fx


def _answer_without_commit(
    core: PartitionCore, requests: list[ClientRequest], message: str
) -> Effects:
    """Answer ``requests`` from the committed state: reads (and retries whose reply is
    stored) as usual, state changes with ``StorageFullError``."""
    fx = Effects()
    core._now = core.clock()
    core._wb = WriteBatch()
    core._fx = fx
    core._replied = {}
    try:
        for req in requests:
            stored = req.request_id is not None and (
                core.store.get("dedup", r.dedup_request_key(req.request_id)) is not None
            )
            if _is_mutating(req) and not stored:
                fx.replies.append((req.reply_to, Reply(StorageFullError(message))))
            else:
                core._on_request(req)
        if core._wb:  # a read never writes; if one did, it is not committed
            log.warning("writes of a read dropped", partition=core.index, ops=len(core._wb))
    finally:
        core._wb = WriteBatch()
        core._fx = Effects()
    return fx


def _abandon_callers(core: PartitionCore) -> list[Any]:
    callers: dict[int, Any] = {}
    if core._broken:
        for kind, item in core._taken:
            if kind == "request":
                callers[id(item.reply_to)] = item.reply_to
    kept: list[tuple[str, Any]] = []
    while True:
        try:
            kind, item = core._intake.popleft()
        except IndexError:
            break
        if kind == "request":
            callers[id(item.reply_to)] = item.reply_to
        else:
            kept.append((kind, item))
    core._intake.extendleft(reversed(kept))
    for watchers in core._watchers.values():
        for watcher in watchers:
            caller = _caller(watcher)
            callers[id(caller)] = caller
    core._watchers.clear()
    core._watch_deadline = None
    return list(callers.values())
