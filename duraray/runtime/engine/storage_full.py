"""A batch whose commit did not fit: answer its callers, rebuild the core, keep going.

When ``run_batch``'s commit fails for lack of space (the disk is full, or the store
reached ``max_map_size``: ``StorageFullError``), nothing of the batch was written, but
the batch had already changed the core's memory (live generators advanced, sequence
numbers taken, timers popped). That memory is thrown away:
``PartitionCore.recover_from_storage_full`` builds a new core over the same store, which
recovers from it exactly as a restarted partition does (``PartitionCore.__init__``), with
the helpers here, and the shell carries on with the new core instead of dying (a crash
would only repeat the failure, each restart re-running every pending activity).

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

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from duraray._errors import StorageFullError
from duraray.runtime.engine import records as r
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.client_ops import ClientOps
from duraray.runtime.engine.intake import IntakeItem, Request
from duraray.runtime.engine.records import ClientRequest, Effects, Reply
from duraray.runtime.engine.requests import is_mutating
from duraray.runtime.engine.store import PartitionStore
from duraray.runtime.engine.waits import Waits

#: Seconds before held work is retried after the first failed commit, and at most.
FULL_RETRY_MIN_S = 0.5
FULL_RETRY_MAX_S = 8.0


def copy_effects(fx: Effects) -> Effects:
    """A copy of ``fx`` whose lists and dicts are its own (the batch appends to the original)."""
    return Effects(
        replies=list(fx.replies),
        messages={d: list(m) for d, m in fx.messages.items()},
        acks=dict(fx.acks),
        activities=list(fx.activities),
        dispatches=list(fx.dispatches),
    )


def storage_full_error(hub: str, index: int, cause: StorageFullError) -> StorageFullError:
    """The error the callers of a batch that did not fit get."""
    return StorageFullError(f"partition p{index} of hub {hub!r} could not commit: {cause}")


@dataclass(slots=True)
class HoldBack:
    """The back-off of a partition whose commits do not fit (see the module docstring)."""

    #: commits that did not fit, in a row
    failures: int = 0
    #: monotonic time until which only client requests run
    until: float = 0.0
    #: intake items waiting for that time, oldest first
    held: list[IntakeItem] = field(default_factory=list)

    def holding(self, mono: float) -> bool:
        """True while held work waits for its retry."""
        return self.until > mono

    def failed_again(self, previous: HoldBack, mono: float) -> float:
        """One more commit did not fit after ``previous``: back off; returns the delay."""
        self.failures = previous.failures + 1
        delay = min(FULL_RETRY_MAX_S, FULL_RETRY_MIN_S * 2 ** (self.failures - 1))
        self.until = mono + delay
        return delay

    def committed(self) -> None:
        """A commit fit: no more back-off."""
        self.failures = 0
        self.until = 0.0


def split_taken(taken: list[IntakeItem]) -> tuple[list[ClientRequest], list[IntakeItem]]:
    """The failed batch's client requests (answered now), and the rest (given back)."""
    requests: list[ClientRequest] = []
    give_back: list[IntakeItem] = []
    for item in taken:
        if isinstance(item, Request):
            requests.append(item.request)
        else:
            give_back.append(item)
    return requests, give_back


def answer_without_commit(
    client_ops: ClientOps,
    store: PartitionStore,
    b: Batch,
    requests: list[ClientRequest],
    message: str,
) -> Effects:
    """Answer ``requests`` from the committed state: reads (and retries whose reply is
    stored) as usual, state changes with ``StorageFullError``. ``b`` is never committed."""
    for req in requests:
        stored = req.request_id is not None and (
            store.get("dedup", r.dedup_request_key(req.request_id)) is not None
        )
        if is_mutating(req) and not stored:
            b.fx.replies.append((req.reply_to, Reply(StorageFullError(message))))
        else:
            client_ops.on_request(b, req)
    return b.fx


def abandon_callers(failed: list[IntakeItem], intake: deque[IntakeItem], waits: Waits) -> list[Any]:
    """The callers a core that cannot go on will never answer: those of the batch that
    failed, of the requests queued in ``intake`` (taken out of it) and of the waits."""
    callers: dict[int, Any] = {}
    for item in failed:
        if isinstance(item, Request):
            callers[id(item.request.reply_to)] = item.request.reply_to
    kept: list[IntakeItem] = []
    while True:
        try:
            item = intake.popleft()
        except IndexError:
            break
        if isinstance(item, Request):
            callers[id(item.request.reply_to)] = item.request.reply_to
        else:
            kept.append(item)
    intake.extendleft(reversed(kept))
    for watcher in waits.take_all():
        callers[id(watcher.caller)] = watcher.caller
    return list(callers.values())
