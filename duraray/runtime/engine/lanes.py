"""A fair share of each batch: one instance's flood of results does not delay the rest.

A partition applies what arrived in batches, one commit each. When one orchestration has
10,000 activities out (a huge fan-out), their results arrive faster than anything else
and, taken first come first served, make every batch long and put everyone else's work
behind thousands of them: a five-step orchestration on the same partition then waits
hundreds of milliseconds per step.

While the partition is shared (something other than a flooding instance had work within
``SHARED_WINDOW_S``), a batch applies at most ``FAIR_SHARE`` results of any one instance
and holds the rest here, in arrival order, for the batches that follow; everything else in
the intake (client requests, messages, other instances' results) is applied at once. A
batch then stays short, and a small instance's step waits for at most one short batch.
Alone, a fan-out takes whole batches as before (``max_batch_items`` results each).

Held results are as volatile as the intake they came from: their activities' rows stay
in the store until a result is applied, so a restart runs those activities again. The
activity gate counts a held result's activity as still out, so holding back results also
holds back new activities of the same flood.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable

from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.intake import Ack, IntakeItem, Resend, Results
from duraray.runtime.engine.records import ActivityResult

#: Results of one instance a shared batch applies: about 1 ms of work on a 2-core machine,
#: as long as a commit. 8 or 16 shave little more latency off and halve a flood's rate.
FAIR_SHARE = 32
#: Partition bookkeeping: no sign of another instance's work.
_HOUSEKEEPING = (Ack, Resend)
#: How long after the last work of a non-flooding instance the partition counts as shared.
SHARED_WINDOW_S = 0.1


class ResultLane:
    """The results held back for later batches (see the module docstring)."""

    def __init__(self) -> None:
        self._held: OrderedDict[str, deque[ActivityResult]] = OrderedDict()
        self._count = 0
        #: Monotonic time until which a batch counts as shared.
        self.shared_until = float("-inf")

    def __len__(self) -> int:
        return self._count

    def drain(
        self,
        b: Batch,
        intake: deque[IntakeItem],
        apply: Callable[[Batch, IntakeItem], None],
        taken: list[IntakeItem],
        limit: int,
    ) -> int:
        """Apply held results, then intake items, up to ``limit`` items (each result
        counts as one); return how many. ``taken`` gets every item applied (a failed
        batch applies them again)."""
        share = FAIR_SHARE if b.mono < self.shared_until else limit
        counts: Counter[str] = Counter()
        applied = 0
        other = False  # work of someone other than a flooding instance
        if self._held:
            # At most half the batch: the intake behind (requests, messages, other
            # instances' results) always gets the other half, however many instances wait.
            held = self._release(counts, min(share, limit), max(1, limit // 2))
            if held:
                item: IntakeItem = Results(held)
                taken.append(item)
                apply(b, item)
                applied += len(held)
        while intake and applied < limit:
            item = intake.popleft()
            if isinstance(item, Results):
                now = self._split(item.results, counts, share, limit - applied)
                if not now:
                    continue
                if now is not item.results:
                    item = Results(now)
                applied += len(now)
            else:
                applied += 1
                other = other or not isinstance(item, _HOUSEKEEPING)
            taken.append(item)
            apply(b, item)
        # A flooding instance got more than its share, or has results held back.
        if other or any(n <= FAIR_SHARE and iid not in self._held for iid, n in counts.items()):
            self.shared_until = b.mono + SHARED_WINDOW_S
        return applied

    def _split(
        self, results: list[ActivityResult], counts: Counter[str], share: int, room: int
    ) -> list[ActivityResult]:
        """The results to apply now (within each instance's share and ``room``); holds
        the rest."""
        if len(results) <= room and not self._held:
            # The common case, nothing held: all of them, unless one instance goes over.
            if len(results) == 1:
                iid = results[0].instance_id
                if counts[iid] < share:
                    counts[iid] += 1
                    return results
            else:
                added = Counter(result.instance_id for result in results)
                if all(counts[iid] + n <= share for iid, n in added.items()):
                    counts.update(added)
                    return results
        now: list[ActivityResult] = []
        for result in results:
            iid = result.instance_id
            if len(now) < room and counts[iid] < share and iid not in self._held:
                counts[iid] += 1
                now.append(result)
            else:
                self._held.setdefault(iid, deque()).append(result)
                self._count += 1
        return now

    def _release(self, counts: Counter[str], share: int, budget: int) -> list[ActivityResult]:
        """Up to ``share`` held results of each instance, oldest first, ``budget`` in all;
        instances served go to the back of the line, so every one gets its turn."""
        out: list[ActivityResult] = []
        for iid in list(self._held):
            if len(out) >= budget:
                break
            queue = self._held[iid]
            n = min(share, len(queue), budget - len(out))
            out.extend(queue.popleft() for _ in range(n))
            counts[iid] += n
            if queue:
                self._held.move_to_end(iid)
            else:
                del self._held[iid]
        self._count -= len(out)
        return out
