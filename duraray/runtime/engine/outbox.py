"""The exactly-once channel between partitions (DESIGN.md §5).

A message is written to the sender's ``outbox`` in the batch that caused it, with the
next sequence number for its destination, and deleted once the destination acknowledges
it; until then it is resent every ``resend_interval``. The receiver applies messages in
sequence order per sender and records the highest sequence applied in ``dedup``, in the
same transaction as their effects, so a resent message is applied once. ``Outbox`` owns
both halves and their memory; the core decides what applying a message means.
"""

from __future__ import annotations

from collections.abc import Callable

from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.batch import Batch
from duraray.runtime.engine.messages import (
    UNREADABLE_KIND,
    PartitionMessage,
    target_of,
    to_wire,
)
from duraray.runtime.engine.records import Effects, Message
from duraray.runtime.engine.routing import partition_for
from duraray.runtime.engine.store import PartitionStore


class Outbox:
    """Sequence numbers, unacknowledged messages and receive-side dedup of one partition."""

    def __init__(
        self, index: int, partitions: int, resend_interval: float, counters: dict[str, float]
    ) -> None:
        self.index = index
        self.partitions = partitions
        self.resend_interval = resend_interval
        self._counters = counters
        self._out_seq: dict[int, int] = {}
        #: destination -> seq -> (message, monotonic time it was last sent)
        self._boxes: dict[int, dict[int, tuple[Message, float]]] = {}
        self._dedup: dict[int, int] = {}
        self._early: dict[int, dict[int, Message]] = {}
        self._next_resend_check = 0.0

    def __len__(self) -> int:
        """Messages sent and not yet acknowledged."""
        return sum(len(box) for box in self._boxes.values())

    # -- sending ----------------------------------------------------------------------------

    def send(self, b: Batch, payload: PartitionMessage) -> None:
        """Send ``payload`` to the partition owning its target, once this batch commits."""
        destination = partition_for(target_of(payload), self.partitions)
        seq = self._out_seq.get(destination, 0) + 1
        self._out_seq[destination] = seq
        msg = to_wire(payload, seq, self.index)
        b.wb.put("outbox", r.outbox_key(destination, seq), codec.encode_record(msg))
        b.wb.put("dedup", r.sent_seq_key(destination), codec.encode(seq))
        self._boxes.setdefault(destination, {})[seq] = (msg, b.mono)
        b.fx.messages.setdefault(destination, []).append(msg)
        self._counters["messages_sent"] += 1

    def acknowledged(self, b: Batch, destination: int, upto: int) -> None:
        """``destination`` applied our messages up to ``upto``: forget them."""
        box = self._boxes.get(destination)
        if not box:
            return
        for seq in [s for s in box if s <= upto]:
            del box[seq]
            b.wb.delete("outbox", r.outbox_key(destination, seq))

    def resend_due(self, mono: float) -> bool:
        """True if some message has waited longer than the resend interval for its ack."""
        if not self._boxes or mono < self._next_resend_check:
            return False
        limit = mono - self.resend_interval
        if any(sent < limit for box in self._boxes.values() for _, sent in box.values()):
            return True
        self._next_resend_check = mono + self.resend_interval / 4
        return False

    def resend_overdue(self, b: Batch) -> None:
        """Send again what has waited a resend interval for its ack."""
        # The outbox is walked a few times per resend interval, not on every batch: it
        # can hold thousands of unacknowledged messages during a large fan-out.
        if b.mono < self._next_resend_check:
            return
        self._next_resend_check = b.mono + self.resend_interval / 4
        limit = b.mono - self.resend_interval
        for destination, box in self._boxes.items():
            overdue = sorted(seq for seq, (_, sent) in box.items() if sent < limit)
            if overdue:
                self._resend(b, destination, overdue)

    def resend_all(self, b: Batch, destination: int) -> None:
        """Send every unacknowledged message to ``destination`` again (its transport may
        have lost some)."""
        box = self._boxes.get(destination)
        if box:
            self._resend(b, destination, sorted(box))

    def _resend(self, b: Batch, destination: int, seqs: list[int]) -> None:
        box = self._boxes[destination]
        resend = b.fx.messages.setdefault(destination, [])
        for seq in seqs:
            msg, _ = box[seq]
            box[seq] = (msg, b.mono)
            resend.append(msg)

    # -- receiving --------------------------------------------------------------------------

    def receive(
        self, b: Batch, source: int, messages: list[Message], apply: Callable[[Message], None]
    ) -> None:
        """Apply the new messages from ``source`` in sequence order, each once.

        Ray may deliver two calls from one sender out of order: messages past a gap are
        held (in memory only; the sender's outbox still has them) until the gap fills.
        """
        last = self._dedup.get(source, 0)
        early = self._early.setdefault(source, {})
        for msg in messages:
            if msg.seq > last:
                early[msg.seq] = msg
        applied = last
        while applied + 1 in early:
            applied += 1
            apply(early.pop(applied))
        if applied != last:
            self._dedup[source] = applied
            b.wb.put("dedup", r.dedup_partition_key(source), codec.encode(applied))
        if applied:
            b.fx.acks[source] = applied

    def skip(self, b: Batch, source: int, seq: int) -> bool:
        """Count message ``seq`` from ``source`` as applied without applying it (it was
        parked): later messages from that sender must not wait behind it. False if it is
        not the next one expected."""
        if seq != self._dedup.get(source, 0) + 1:
            return False
        self._dedup[source] = seq
        self._early.get(source, {}).pop(seq, None)
        b.wb.put("dedup", r.dedup_partition_key(source), codec.encode(seq))
        b.fx.acks[source] = seq
        return True

    # -- recovery ---------------------------------------------------------------------------

    def recover(
        self,
        store: PartitionStore,
        mono: float,
        pending: Effects,
        bad: list[tuple[str, bytes, BaseException]],
    ) -> int:
        """Load the outbox and dedup state from ``store``; every unacknowledged message
        is queued in ``pending`` to be sent again. Returns how many. Outbox rows it
        cannot read are skipped and listed in ``bad``."""
        resent = 0
        for key, value in store.scan("outbox"):
            try:
                destination = r.read_u32(key)
                seq = r.read_u64(key, 4)
            except Exception as exc:
                bad.append(("outbox", key, exc))
                continue
            try:
                msg = codec.decode_record(Message, value)
            except Exception as exc:
                # Its sequence number must still reach the receiver, or every later
                # message would wait behind the gap: a placeholder of a kind no partition
                # applies goes out in its place (dropped on arrival, counted as applied).
                bad.append(("outbox", key, exc))
                msg = Message(seq, self.index, UNREADABLE_KIND, "")
            self._boxes.setdefault(destination, {})[msg.seq] = (msg, mono)
            self._out_seq[destination] = max(self._out_seq.get(destination, 0), msg.seq)
            pending.messages.setdefault(destination, []).append(msg)
            resent += 1
        for key, value in store.scan("dedup", prefix=b"p"):
            self._dedup[r.read_u32(key, 1)] = codec.decode(value)
        for key, value in store.scan("dedup", prefix=b"s"):
            destination = r.read_u32(key, 1)
            self._out_seq[destination] = max(self._out_seq.get(destination, 0), codec.decode(value))
        return resent
