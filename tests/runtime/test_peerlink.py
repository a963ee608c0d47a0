"""Tests of duraray.runtime.ray.peerlink: frames, the authenticated handshake, and reconnection.

Pure asyncio on 127.0.0.1, no Ray: each test runs its own event loop (``_run``), builds
its PeerLinks through a ``Net`` (which plays the partitions' address book) and closes them
all at the end. Nothing waits on a fixed sleep: every wait polls a condition with a bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duraray.runtime.engine.records import Message
from duraray.runtime.ray import peerlink
from duraray.runtime.ray.peerlink import (
    MAX_FRAME_BYTES,
    PROTOCOL,
    RETRY_AFTER,
    PeerLinks,
    decode_frame,
    encode_frame,
)

HUB = "links-test"
SECRET = b"0123456789abcdef0123456789abcdef"
HOST = "127.0.0.1"
#: Seconds any single wait may take before it counts as a failure.
TIMEOUT = 5.0


def _messages(source: int, first_seq: int, count: int) -> list[Message]:
    return [
        Message(
            seq=first_seq + i,
            source=source,
            kind="event",
            instance_id=f"inst-{first_seq + i}",
            execution_id="exec-1",
            event=bytes([i % 256]) * (i + 1),
            body={"n": i, "tag": "x"} if i % 2 else None,
        )
        for i in range(count)
    ]


# -- harness -------------------------------------------------------------------------------


@dataclass
class Peer:
    """One PeerLinks and what its callbacks received."""

    links: PeerLinks
    frames: list[tuple[int, int | None, list[Message]]] = field(default_factory=list)
    reconnects: list[int] = field(default_factory=list)


class Net:
    """The peers of one test, and the address book their resolvers read."""

    def __init__(self) -> None:
        self.addresses: dict[int, tuple[str, int]] = {}
        #: indexes asked of the default resolver, in order
        self.resolved: list[int] = []
        self.peers: list[Peer] = []

    async def resolve(self, index: int) -> tuple[str, int] | None:
        self.resolved.append(index)
        return self.addresses.get(index)

    async def peer(
        self,
        index: int,
        *,
        hub: str = HUB,
        secret: bytes = SECRET,
        listen: bool = True,
        resolve: Callable[[int], Awaitable[tuple[str, int] | None]] | None = None,
    ) -> Peer:
        """A PeerLinks for partition ``index``; listening ones are entered in the book."""
        frames: list[tuple[int, int | None, list[Message]]] = []
        reconnects: list[int] = []
        links = PeerLinks(
            hub=hub,
            index=index,
            secret=secret,
            on_frame=lambda source, ack, messages: frames.append((source, ack, list(messages))),
            resolve=resolve or self.resolve,
            on_reconnect=reconnects.append,
        )
        peer = Peer(links, frames, reconnects)
        self.peers.append(peer)
        if listen:
            self.addresses[index] = await links.start(HOST)
        return peer

    async def close(self) -> None:
        for peer in self.peers:
            await peer.links.close()
        # Let the closed connections' handlers and the cancelled tasks finish.
        await _settle()


def _run(body: Callable[[Net], Awaitable[None]]) -> None:
    """Run ``body(net)`` on a fresh event loop; no task may fail unnoticed."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        net = Net()
        try:
            await body(net)  # in this task: _settle waits for every other one
        finally:
            await net.close()

    asyncio.run(main())
    assert [] == errors


async def _until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.002)


async def _settle(timeout: float = TIMEOUT) -> None:
    """Wait until every other task on the loop (connection attempts, handlers) is done."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [
            t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks still running after {timeout} s: {pending}")
        await asyncio.wait(pending, timeout=0.05)


async def _send_until_accepted(
    links: PeerLinks, destination: int, ack: int | None, messages: list[Message]
) -> int:
    """Send until a link takes the frame; returns how many sends were declined first."""
    declined = 0
    deadline = time.monotonic() + TIMEOUT
    while not links.send(destination, ack, messages):
        declined += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"no link to {destination} within {TIMEOUT} s")
        await asyncio.sleep(0.002)
    return declined


def _mac(secret: bytes, nonce: bytes, hub: str, source: int) -> str:
    """The handshake's answer to ``nonce``, as the module docstring specifies it."""
    return hmac.new(secret, nonce + f"{hub}/{source}".encode(), hashlib.sha256).hexdigest()


def _framed(value: Any) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def _raw_handshake(
    address: tuple[str, int], *, hub: str = HUB, source: int = 0, secret: bytes = SECRET
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
    """A hand-made client: connect, answer the nonce; returns the server's answer too."""
    reader, writer = await asyncio.open_connection(*address)
    nonce = await asyncio.wait_for(reader.readexactly(16), TIMEOUT)
    writer.write(_framed([PROTOCOL, hub, source, _mac(secret, nonce, hub, source)]))
    (size,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), TIMEOUT))
    answer = msgpack.unpackb(await asyncio.wait_for(reader.readexactly(size), TIMEOUT))
    return reader, writer, answer


async def _closes(reader: asyncio.StreamReader) -> bytes:
    """What the peer sends before closing the connection (within the bound)."""
    return await asyncio.wait_for(reader.read(), TIMEOUT)


# -- frames --------------------------------------------------------------------------------


def test_frame_round_trip() -> None:
    """A frame is its body's length then the body; decoding the body gives ack and messages."""
    messages = _messages(source=3, first_seq=10, count=4)
    frame = encode_frame(41, messages)
    (size,) = struct.unpack(">I", frame[:4])
    assert len(frame) - 4 == size
    assert (41, messages) == decode_frame(frame[4:])


@pytest.mark.parametrize("ack", [None, 0, 7, 2**63 - 1])
def test_frame_of_acks_only_round_trips(ack: int | None) -> None:
    """A frame may carry no messages (an ack alone), or neither."""
    frame = encode_frame(ack, [])
    assert (ack, []) == decode_frame(frame[4:])


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_bodies = st.none() | st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        _leaves,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=4,
)
_message_strategy = st.builds(
    Message,
    seq=st.integers(min_value=0, max_value=2**64 - 1),
    source=st.integers(min_value=0, max_value=1023),
    kind=st.sampled_from(["start", "event", "terminate", "rewind"]),
    instance_id=st.text(max_size=20),
    execution_id=st.none() | st.text(max_size=20),
    event=st.none() | st.binary(max_size=64),
    body=_bodies,
)


@settings(max_examples=200, deadline=None)
@given(
    ack=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    messages=st.lists(_message_strategy, max_size=5),
)
def test_frame_round_trip_property(ack: int | None, messages: list[Message]) -> None:
    """Any ack and any messages survive encode_frame / decode_frame, in order."""
    frame = encode_frame(ack, messages)
    assert len(frame) - 4 == struct.unpack(">I", frame[:4])[0]
    assert (ack, messages) == decode_frame(frame[4:])


# -- links ---------------------------------------------------------------------------------


def test_first_send_declines_then_the_link_carries_frames_in_order() -> None:
    """No link yet: send declines and connects; then frames arrive whole, in order."""

    async def body(net: Net) -> None:
        sender = await net.peer(0, listen=False)
        receiver = await net.peer(1)
        first, second = _messages(0, 1, 3), _messages(0, 4, 2)

        assert not sender.links.send(1, 7, first)
        assert 1 == sender.links.counters["declined"]
        assert [] == sender.links.connected()
        declined = await _send_until_accepted(sender.links, 1, 7, first)
        assert sender.links.send(1, 9, second)
        await _until(lambda: len(receiver.frames) >= 2, "two frames received")

        assert [(0, 7, first), (0, 9, second)] == receiver.frames
        assert [1] == sender.links.connected()
        sent = {"frames_sent": 2, "frames_received": 0, "declined": 1 + declined, "rejected": 0}
        assert sent == sender.links.counters
        received = {"frames_sent": 0, "frames_received": 2, "declined": 0, "rejected": 0}
        assert received == receiver.links.counters
        assert [] == sender.reconnects  # a first connection is no reconnection

    _run(body)


def test_frames_of_acks_only() -> None:
    """A frame with no messages hands the ack alone (and an empty list) to on_frame."""

    async def body(net: Net) -> None:
        sender = await net.peer(2, listen=False)
        receiver = await net.peer(0)
        await _send_until_accepted(sender.links, 0, 12, [])
        assert sender.links.send(0, 13, [])
        assert sender.links.send(0, None, [])
        await _until(lambda: len(receiver.frames) >= 3, "three frames received")
        assert [(2, 12, []), (2, 13, []), (2, None, [])] == receiver.frames

    _run(body)


def test_links_in_both_directions() -> None:
    """Each side connects to the other's server; each frame names its true source."""

    async def body(net: Net) -> None:
        a = await net.peer(0)
        b = await net.peer(1)
        await _send_until_accepted(a.links, 1, None, _messages(0, 1, 1))
        await _send_until_accepted(b.links, 0, 1, _messages(1, 1, 2))
        await _until(lambda: a.frames and b.frames, "a frame each way")
        assert [(0, None, _messages(0, 1, 1))] == b.frames
        assert [(1, 1, _messages(1, 1, 2))] == a.frames
        assert ([1], [0]) == (a.links.connected(), b.links.connected())

    _run(body)


def test_wrong_secret_is_refused() -> None:
    """A peer with another secret is refused: no frame is taken, send keeps declining."""

    async def body(net: Net) -> None:
        intruder = await net.peer(0, secret=b"not the hub's secret", listen=False)
        receiver = await net.peer(1)
        sends: list[bool] = []
        deadline = time.monotonic() + TIMEOUT
        # Two refusals: the first attempt and a retry after its backoff.
        while receiver.links.counters["rejected"] < 2:
            assert time.monotonic() < deadline, "fewer than two refusals"
            sends.append(intruder.links.send(1, 3, _messages(0, 1, 1)))
            await asyncio.sleep(0.002)
        await _settle()
        sends.append(intruder.links.send(1, 3, _messages(0, 1, 1)))

        assert not any(sends)
        assert [] == receiver.frames
        assert [] == intruder.links.connected()
        assert 0 == intruder.links.counters["frames_sent"]
        assert 0 == receiver.links.counters["frames_received"]
        assert len(sends) == intruder.links.counters["declined"]

    _run(body)


def test_other_hub_is_refused() -> None:
    """The same secret does not let a partition of another hub in."""

    async def body(net: Net) -> None:
        stranger = await net.peer(0, hub="another-hub", listen=False)
        receiver = await net.peer(1)
        deadline = time.monotonic() + TIMEOUT
        while receiver.links.counters["rejected"] < 1:
            assert time.monotonic() < deadline, "no refusal"
            assert not stranger.links.send(1, None, _messages(0, 1, 1))
            await asyncio.sleep(0.002)
        await _settle()
        assert not stranger.links.send(1, None, _messages(0, 1, 1))
        assert [] == receiver.frames
        assert [] == stranger.links.connected()

    _run(body)


@pytest.mark.parametrize(
    "hello",
    [
        pytest.param([PROTOCOL, HUB, 0], id="short-hello"),
        pytest.param(["duraray-link/0", HUB, 0, "x" * 64], id="old-protocol"),
        pytest.param([PROTOCOL, HUB, "0", "x" * 64], id="source-not-int"),
        pytest.param([PROTOCOL, HUB, 0, b"x" * 64], id="mac-not-str"),
        pytest.param({"hub": HUB}, id="not-a-list"),
    ],
)
def test_malformed_handshakes_are_refused(hello: Any) -> None:
    """A hello that is not ``[PROTOCOL, hub, source, mac]`` is refused and the link closed."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        reader, writer = await asyncio.open_connection(*net.addresses[1])
        await asyncio.wait_for(reader.readexactly(16), TIMEOUT)
        writer.write(_framed(hello))
        try:
            assert b"" == await _closes(reader)
        finally:
            writer.close()
        assert 1 == receiver.links.counters["rejected"]

    _run(body)


def test_handshake_mac_binds_the_source() -> None:
    """A mac computed for one source index does not admit another."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        reader, writer = await asyncio.open_connection(*net.addresses[1])
        try:
            nonce = await asyncio.wait_for(reader.readexactly(16), TIMEOUT)
            writer.write(_framed([PROTOCOL, HUB, 2, _mac(SECRET, nonce, HUB, 3)]))
            assert b"" == await _closes(reader)
        finally:
            writer.close()
        assert 1 == receiver.links.counters["rejected"]
        # The right mac for the claimed source is accepted.
        reader, writer, ok = await _raw_handshake(net.addresses[1], source=2)
        writer.close()
        assert [PROTOCOL, "ok"] == ok

    _run(body)


@pytest.mark.parametrize("failure", ["none", "raises", "refused"])
def test_unresolvable_peer_declines_and_retries_with_backoff(
    monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """A resolver giving None or raising, or a closed port: send declines, never raises,
    and tries again only once each backoff delay of RETRY_AFTER has passed."""

    class Clock:
        now = 1000.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(peerlink, "time", clock)

    async def body(net: Net) -> None:
        closed = await net.peer(5)  # a port that was open once and is closed now
        await closed.links.close()
        attempts: list[int] = []

        async def resolve(index: int) -> tuple[str, int] | None:
            attempts.append(index)
            if failure == "raises":
                raise RuntimeError("no such actor")
            return net.addresses[5] if failure == "refused" else None

        sender = await net.peer(0, listen=False, resolve=resolve)
        for failures, delay in enumerate([*RETRY_AFTER, RETRY_AFTER[-1]], start=1):
            assert not sender.links.send(4, None, _messages(0, 1, 1))
            await _settle()
            assert [4] * failures == attempts
            failed_at = clock.now
            # Within the backoff: no new attempt, however often send is called.
            clock.now = failed_at + delay / 2
            for _ in range(3):
                assert not sender.links.send(4, None, _messages(0, 1, 1))
                await _settle()
            assert [4] * failures == attempts
            clock.now = failed_at + delay
        assert [] == sender.links.connected()
        assert 4 * len(RETRY_AFTER) + 4 == sender.links.counters["declined"]

    _run(body)


def test_receiver_restart_reconnects_once() -> None:
    """The receiver's process restarts on a new port: the sender notices, reconnects to
    the new address, and on_reconnect(dest) is called exactly once."""

    async def body(net: Net) -> None:
        sender = await net.peer(0, listen=False)
        old = await net.peer(1)
        await _send_until_accepted(sender.links, 1, None, _messages(0, 1, 2))
        await _until(lambda: old.frames, "a frame on the first link")
        assert [] == sender.reconnects

        await old.links.close()
        await _until(lambda: not sender.links.connected(), "the sender noticed the close")
        new = await net.peer(1)
        await _send_until_accepted(sender.links, 1, 2, _messages(0, 3, 1))
        for seq in range(4, 7):
            assert sender.links.send(1, None, _messages(0, seq, 1))
        await _until(lambda: len(new.frames) >= 4, "four frames on the new link")

        assert [1] == sender.reconnects
        expected = [(0, 2, _messages(0, 3, 1))]
        expected += [(0, None, _messages(0, seq, 1)) for seq in range(4, 7)]
        assert expected == new.frames
        assert [(0, None, _messages(0, 1, 2))] == old.frames
        assert [1] == sender.links.connected()

    _run(body)


def test_forget_drops_the_link_and_the_next_one_counts_as_a_reconnect() -> None:
    """forget() closes the connection; the next send reconnects lazily (on_reconnect once)."""

    async def body(net: Net) -> None:
        sender = await net.peer(0, listen=False)
        receiver = await net.peer(1)
        await _send_until_accepted(sender.links, 1, 1, [])
        sender.links.forget(1)
        sender.links.forget(7)  # never connected: nothing to do
        assert [] == sender.links.connected()
        assert not sender.links.send(1, 2, [])
        await _send_until_accepted(sender.links, 1, 3, [])
        await _until(lambda: len(receiver.frames) >= 2, "two frames")
        assert [(0, 1, []), (0, 3, [])] == receiver.frames
        assert [1] == sender.reconnects

    _run(body)


def test_oversize_frame_header_drops_the_connection() -> None:
    """A header announcing more than MAX_FRAME_BYTES: the connection is dropped, on_frame
    is not called, and the server still takes new links."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        reader, writer, ok = await _raw_handshake(net.addresses[1], source=0)
        assert [PROTOCOL, "ok"] == ok
        try:
            writer.write(struct.pack(">I", MAX_FRAME_BYTES + 1) + b"\x00" * 64)
            assert b"" == await _closes(reader)
        finally:
            writer.close()
        assert [] == receiver.frames
        assert 0 == receiver.links.counters["frames_received"]

        sender = await net.peer(0, listen=False)
        await _send_until_accepted(sender.links, 1, 5, [])
        await _until(lambda: receiver.frames, "a frame after the bad one")
        assert [(0, 5, [])] == receiver.frames

    _run(body)


def test_oversize_hello_is_dropped() -> None:
    """The size limit holds during the handshake as well."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        reader, writer = await asyncio.open_connection(*net.addresses[1])
        try:
            await asyncio.wait_for(reader.readexactly(16), TIMEOUT)
            writer.write(struct.pack(">I", MAX_FRAME_BYTES + 1))
            assert b"" == await _closes(reader)
        finally:
            writer.close()
        assert [] == receiver.frames

    _run(body)


def test_undecodable_frame_drops_the_connection() -> None:
    """A frame that is not ``[ack, [message, ...]]`` drops the link without on_frame."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        _, writer_ok, _ = await _raw_handshake(net.addresses[1], source=0)
        reader, writer, _ = await _raw_handshake(net.addresses[1], source=2)
        try:
            writer_ok.write(encode_frame(1, _messages(0, 1, 1)))
            writer.write(_framed({"not": "a frame"}))
            assert b"" == await _closes(reader)
            await _until(lambda: receiver.frames, "the good frame")
        finally:
            writer.close()
            writer_ok.close()
        assert [(0, 1, _messages(0, 1, 1))] == receiver.frames
        assert 1 == receiver.links.counters["frames_received"]

    _run(body)


def test_backed_up_link_declines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over MAX_BUFFERED_BYTES unsent, send declines but keeps the connection."""

    async def body(net: Net) -> None:
        sender = await net.peer(0, listen=False)
        receiver = await net.peer(1)
        await _send_until_accepted(sender.links, 1, 1, [])
        declined = sender.links.counters["declined"]
        monkeypatch.setattr(peerlink, "MAX_BUFFERED_BYTES", -1)  # any buffer is too much
        assert not sender.links.send(1, 2, [])
        assert declined + 1 == sender.links.counters["declined"]
        assert [1] == sender.links.connected()
        monkeypatch.undo()
        assert sender.links.send(1, 3, [])
        await _until(lambda: len(receiver.frames) >= 2, "two frames")
        assert [(0, 1, []), (0, 3, [])] == receiver.frames

    _run(body)


def test_close_closes_everything() -> None:
    """close() ends the server, the outgoing links and the incoming ones."""

    async def body(net: Net) -> None:
        a = await net.peer(0)
        b = await net.peer(1)
        c = await net.peer(2)
        for source, dest in [(a, 1), (a, 2), (b, 0), (c, 0)]:
            await _send_until_accepted(source.links, dest, None, [])
        await _until(lambda: len(a.frames) >= 2, "frames to a")

        await a.links.close()
        assert [] == a.links.connected()
        # Its peers see their links to it close.
        await _until(lambda: not b.links.connected() and not c.links.connected(), "peers noticed")
        # Nothing listens on its address any more.
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection(*net.addresses[0])
            writer.close()
        # Its background tasks are done (or cancelled).
        await _settle()
        assert not b.links.send(0, None, [])
        assert 2 == len(a.frames)

    _run(body)


def test_address_before_and_after_start() -> None:
    """address is None before start; start is idempotent."""

    async def body(net: Net) -> None:
        peer = await net.peer(3, listen=False)
        assert peer.links.address is None
        address = await peer.links.start(HOST)
        assert (HOST, address[1]) == address
        assert address == await peer.links.start(HOST)
        assert address == peer.links.address

    _run(body)


def test_non_ascii_mac_is_an_ordinary_refusal() -> None:
    """A mac with non-ASCII characters is counted as a refused handshake, not an error."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        reader, writer = await asyncio.open_connection(*net.addresses[1])
        try:
            await asyncio.wait_for(reader.readexactly(16), TIMEOUT)
            writer.write(_framed([PROTOCOL, HUB, 0, "é" * 64]))
            assert b"" == await _closes(reader)
        finally:
            writer.close()
        assert 1 == receiver.links.counters["rejected"]
        assert [] == receiver.frames

    _run(body)


def test_undecodable_hello_counts_as_refused() -> None:
    """A hello that is not msgpack at all is a refused handshake too."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        reader, writer = await asyncio.open_connection(*net.addresses[1])
        try:
            await asyncio.wait_for(reader.readexactly(16), TIMEOUT)
            writer.write(struct.pack(">I", 1) + b"\xc1")  # 0xc1: never valid msgpack
            assert b"" == await _closes(reader)
        finally:
            writer.close()
        assert 1 == receiver.links.counters["rejected"]

    _run(body)


def test_close_during_a_connection_attempt_closes_its_socket() -> None:
    """A server that accepts but never answers: close() cancels the attempt and the
    half-open connection is closed (the server sees EOF)."""

    async def body(net: Net) -> None:
        accepted: list[asyncio.StreamReader] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(reader)
            try:
                await reader.read()  # returns at EOF: the client closed its socket
            finally:
                writer.close()

        server = await asyncio.start_server(silent, HOST, 0)
        try:
            net.addresses[1] = (HOST, server.sockets[0].getsockname()[1])
            sender = await net.peer(0, listen=False)
            assert not sender.links.send(1, None, [])
            await _until(lambda: accepted, "the connection reached the silent server")
            await sender.links.close()
            await _until(lambda: accepted[0].at_eof(), "the half-open socket was closed")
        finally:
            server.close()

    _run(body)


def test_send_after_close_declines_without_reconnecting() -> None:
    """Once closed, a PeerLinks opens no new connections."""

    async def body(net: Net) -> None:
        await net.peer(1)
        sender = await net.peer(0)
        await _send_until_accepted(sender.links, 1, None, [])
        await sender.links.close()
        asked = len(net.resolved)
        for _ in range(3):
            assert not sender.links.send(1, None, [])
        await _settle()
        assert [] == sender.links.connected()
        assert asked == len(net.resolved)

    _run(body)


def test_encode_frames_splits_in_order_and_acks_on_the_last() -> None:
    """Messages over several frames keep their order; only the last frame carries the ack."""
    messages = _messages(source=2, first_seq=1, count=40)
    for target in (1, 300, 10**9):
        frames = peerlink.encode_frames(9, messages, target)
        assert frames is not None
        decoded = []
        for frame in frames:
            (size,) = struct.unpack(">I", frame[:4])
            assert len(frame) - 4 == size
            decoded.append(decode_frame(frame[4:]))
        assert messages == [m for _, batch in decoded for m in batch]
        assert [None] * (len(frames) - 1) + [9] == [ack for ack, _ in decoded]
    assert 1 == len(peerlink.encode_frames(9, messages, 10**9) or [])
    assert 40 == len(peerlink.encode_frames(9, messages, 1) or [])


def test_a_message_too_large_for_any_frame_is_declined(monkeypatch: pytest.MonkeyPatch) -> None:
    """send hands a message over the frame limit to the fallback (the Ray call) instead of
    writing a frame the receiver would refuse; smaller batches still go as several frames."""
    monkeypatch.setattr(peerlink, "MAX_FRAME_BYTES", 4096)
    monkeypatch.setattr(peerlink, "FRAME_BYTES", 1024)

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        sender = await net.peer(0)
        await _send_until_accepted(sender.links, 1, None, [])
        big = replace(_messages(0, 1, 1)[0], event=b"x" * 5000)
        assert not sender.links.send(1, 3, [big])
        many = _messages(0, 1, 30)  # ~30 x 100 bytes: several 1 KiB frames
        assert sender.links.send(1, 4, many)
        await _until(lambda: sum(len(m) for _, _, m in receiver.frames) == 30, "all 30 arrived")
        assert many == [m for _, _, batch in receiver.frames for m in batch]
        assert 4 == receiver.frames[-1][1]
        assert [] == receiver.reconnects and sender.links.connected() == [1]

    _run(body)


def test_hello_over_the_handshake_limit_is_refused() -> None:
    """Before authentication a peer may send only a small hello."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        reader, writer = await asyncio.open_connection(*net.addresses[1])
        try:
            await asyncio.wait_for(reader.readexactly(16), TIMEOUT)
            writer.write(struct.pack(">I", peerlink.MAX_HELLO_BYTES + 1))
            assert b"" == await _closes(reader)
        finally:
            writer.close()
        assert 1 == receiver.links.counters["rejected"]

    _run(body)


def test_a_peer_claiming_the_receivers_own_index_is_refused() -> None:
    """A hello naming the receiver itself as the source is refused, even with a valid mac."""

    async def body(net: Net) -> None:
        receiver = await net.peer(1)
        reader, writer = await asyncio.open_connection(*net.addresses[1])
        try:
            nonce = await asyncio.wait_for(reader.readexactly(16), TIMEOUT)
            writer.write(_framed([PROTOCOL, HUB, 1, _mac(SECRET, nonce, HUB, 1)]))
            assert b"" == await _closes(reader)
        finally:
            writer.close()
        assert 1 == receiver.links.counters["rejected"]

    _run(body)


def test_a_connection_that_keeps_dying_right_away_backs_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that completes the handshake and then drops every connection at once does
    not get a tight reconnect-and-resend loop: each quick death counts as a failure."""

    class Clock:
        now = 1000.0

        def monotonic(self) -> float:
            return self.now

    clock = Clock()
    monkeypatch.setattr(peerlink, "time", clock)  # the module's clock only, not asyncio's

    async def body(net: Net) -> None:
        accepted = []

        async def drop_after_handshake(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            accepted.append(1)
            writer.write(b"\0" * 16)
            await reader.readexactly(4)
            writer.write(_framed([PROTOCOL, "ok"]))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(drop_after_handshake, HOST, 0)
        try:
            net.addresses[1] = (HOST, server.sockets[0].getsockname()[1])
            sender = await net.peer(0, listen=False)
            sender.links.send(1, None, [])
            await _until(lambda: len(accepted) == 1, "first connection")
            await _settle()
            # Died at once: no new attempt until the backoff has passed, however often
            # the partition sends.
            for _ in range(20):
                assert not sender.links.send(1, None, [])
                await asyncio.sleep(0.005)
            assert 1 == len(accepted)
            clock.now += RETRY_AFTER[0] + 0.01
            sender.links.send(1, None, [])
            await _until(lambda: len(accepted) == 2, "retry after the backoff")
        finally:
            server.close()

    _run(body)
