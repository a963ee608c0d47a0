"""Direct TCP links between a hub's partition actors, for partition messages and acks.

A Ray actor call costs about half a millisecond of CPU on each side; a partition sends one
per destination per batch, plus one per acknowledgement. Workloads whose steps hop from
partition to partition (an orchestration locking and calling entities elsewhere) spend
most of their CPU there. A frame on an open TCP connection costs a few microseconds, so
partitions keep one outgoing connection per peer and send their messages and acks on it.

The links carry no guarantee of their own and need none: every message stays in the
sender's outbox until acknowledged, the receiver applies messages by sequence number
(holding early ones, dropping duplicates), and unacknowledged messages are resent. A link
that is down, not yet connected or backed up therefore just declines a frame
(``send`` returns False) and the shell sends it as a Ray actor call instead. After a link
is re-established, ``on_reconnect`` lets the shell resend what the lost connection may
have swallowed.

A connection is authenticated before any frame is accepted: the server sends a random
nonce, the client answers with an HMAC of it under the hub's link secret (held by the
partition actors only, passed at launch).

Wire format: every frame is a 4-byte big-endian length followed by a msgpack array.
Handshake: server -> client ``nonce`` (16 raw bytes, unframed); client -> server
``[PROTOCOL, hub, source, mac]``; server -> client ``[PROTOCOL, "ok"]``. Then client ->
server data frames ``[ack_upto | None, [message, ...]]``, each message an encoded
``Message`` record.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import structlog

from duraray.runtime.engine import codec
from duraray.runtime.engine.records import Message

log = structlog.get_logger("duraray.peerlink")

PROTOCOL = "duraray-link/1"
_HEADER = struct.Struct(">I")
#: The largest frame a link accepts. ``send`` splits a batch's messages into frames of
#: about ``FRAME_BYTES`` and hands a single message larger than this to the fallback.
MAX_FRAME_BYTES = 256 * 1024 * 1024
#: The size ``send`` aims its frames at (a frame holds at least one message).
FRAME_BYTES = 4 * 1024 * 1024
#: The largest handshake accepted: read before the peer is authenticated, so small.
MAX_HELLO_BYTES = 4096
#: A connection that dies within this many seconds of its handshake counts as a failed
#: attempt (backoff applies): a peer that keeps dropping it must not cause a tight
#: reconnect-and-resend loop.
STABLE_AFTER = 1.0
#: Seconds between two warnings about refused handshakes (a misconfigured peer retries).
WARN_EVERY = 30.0
#: Bytes a connection may have queued unsent before frames go by Ray calls instead: a
#: peer that stopped reading must not make this process buffer without bound.
MAX_BUFFERED_BYTES = 32 * 1024 * 1024
#: Seconds to wait after a failed connection attempt before trying that peer again.
RETRY_AFTER = (0.05, 0.2, 1.0, 5.0)
#: Seconds a connection attempt (resolve, connect, handshake) may take.
CONNECT_TIMEOUT = 10.0

#: (source, ack_upto or None, messages) -> None
FrameHandler = Callable[[int, int | None, list[Message]], None]
#: peer index -> (host, port), or None if the peer has no link server
Resolver = Callable[[int], Awaitable[tuple[str, int] | None]]


def encode_frame(ack: int | None, messages: list[Message]) -> bytes:
    """One data frame: ``ack`` (or None) and ``messages``, with its length header."""
    body = msgpack.packb([ack, [codec.pack_record(m) for m in messages]], use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def encode_frames(
    ack: int | None, messages: list[Message], target: int = FRAME_BYTES
) -> list[bytes] | None:
    """``messages`` (in order) and ``ack`` as frames of about ``target`` bytes each; the
    ack rides on the last. None if one message alone is over ``MAX_FRAME_BYTES``."""
    packed = [msgpack.packb(codec.pack_record(m), use_bin_type=True) for m in messages]
    if any(len(item) > MAX_FRAME_BYTES - 64 for item in packed):
        return None
    groups: list[list[bytes]] = [[]]
    size = 0
    for item in packed:
        if groups[-1] and size + len(item) > target:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += len(item)
    frames = []
    for number, group in enumerate(groups):
        last = number == len(groups) - 1
        # The array is assembled from already-packed items: no second encoding pass.
        body = msgpack.packb(ack if last else None) + _array_header(len(group)) + b"".join(group)
        frames.append(_HEADER.pack(len(body) + 1) + b"\x92" + body)
    return frames


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def decode_frame(body: bytes) -> tuple[int | None, list[Message]]:
    """The ack and messages of a data frame's body (its length header removed)."""
    ack, items = msgpack.unpackb(body, raw=False)
    return ack, [codec.unpack_record(Message, item) for item in items]


def _mac(secret: bytes, nonce: bytes, hub: str, source: int) -> str:
    return hmac.new(secret, nonce + f"{hub}/{source}".encode(), hashlib.sha256).hexdigest()


async def _read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> bytes:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > limit:
        raise ValueError(f"frame of {size} bytes is over the {limit} byte limit")
    return await reader.readexactly(size)


def _frame(value: Any) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


class _Outgoing:
    """The connection to one peer, and when it may next be tried."""

    __slots__ = ("connecting", "failures", "retry_at", "up_since", "was_up", "writer")

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.connecting = False
        self.retry_at = 0.0
        self.failures = 0
        self.up_since = 0.0
        self.was_up = False


class PeerLinks:
    """One partition's link server and its outgoing connections to the other partitions.

    Everything runs on the owning actor's event loop: ``send`` never blocks or raises, it
    writes the frame on an open connection or returns False (and starts connecting in the
    background) so the caller can use its fallback.
    """

    def __init__(
        self,
        *,
        hub: str,
        index: int,
        secret: bytes,
        on_frame: FrameHandler,
        resolve: Resolver,
        on_reconnect: Callable[[int], None],
    ) -> None:
        self.hub = hub
        self.index = index
        self._secret = secret
        self._on_frame = on_frame
        self._resolve = resolve
        self._on_reconnect = on_reconnect
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._out: dict[int, _Outgoing] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._incoming: set[asyncio.StreamWriter] = set()
        self._closed = False
        self._next_warning = 0.0
        self.counters = {"frames_sent": 0, "frames_received": 0, "declined": 0, "rejected": 0}
        self._log = log.bind(hub=hub, partition=index)

    # -- the server -----------------------------------------------------------------------

    async def start(self, host: str) -> tuple[str, int]:
        """Listen on ``host`` (an ephemeral port); returns the address peers connect to."""
        if self._address is None:
            self._server = await asyncio.start_server(self._serve, host, 0)
            port = self._server.sockets[0].getsockname()[1]
            self._address = (host, port)
        return self._address

    @property
    def address(self) -> tuple[str, int] | None:
        """Where this partition's link server listens (None before ``start``)."""
        return self._address

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._incoming.add(writer)
        source = -1
        try:
            nonce = os.urandom(16)
            writer.write(nonce)
            try:
                hello = msgpack.unpackb(
                    await asyncio.wait_for(_read_frame(reader, MAX_HELLO_BYTES), CONNECT_TIMEOUT),
                    raw=False,
                )
            except (ValueError, msgpack.UnpackException):
                hello = None  # oversized or not msgpack: a bad handshake like any other
            if not self._authentic(hello, nonce):
                self.counters["rejected"] += 1
                now = time.monotonic()
                if now >= self._next_warning:
                    # A peer with another secret (a second launch of the same hub) retries
                    # every few seconds: say so now and then, not on every attempt.
                    self._next_warning = now + WARN_EVERY
                    self._log.warning(
                        "peer link refused: bad handshake",
                        peer=writer.get_extra_info("peername"),
                        refused_so_far=self.counters["rejected"],
                    )
                return
            assert isinstance(hello, list)
            source = hello[2]
            writer.write(_frame([PROTOCOL, "ok"]))
            on_frame = self._on_frame
            while True:
                ack, messages = decode_frame(await _read_frame(reader))
                self.counters["frames_received"] += 1
                on_frame(source, ack, messages)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the peer went away; its messages are resent from its outbox
        except Exception:
            self._log.exception("peer link dropped after a bad frame", source=source)
        finally:
            self._incoming.discard(writer)
            writer.close()

    def _authentic(self, hello: Any, nonce: bytes) -> bool:
        if not (
            isinstance(hello, list)
            and len(hello) == 4
            and hello[0] == PROTOCOL
            and hello[1] == self.hub
            and isinstance(hello[2], int)
            and not isinstance(hello[2], bool)
            and 0 <= hello[2] != self.index
            and isinstance(hello[3], str)
        ):
            return False
        # As bytes: compare_digest refuses non-ASCII str, and a peer must not be able to
        # turn a bad handshake into an error.
        expected = _mac(self._secret, nonce, self.hub, hello[2]).encode()
        return hmac.compare_digest(hello[3].encode("utf-8", "replace"), expected)

    # -- outgoing -------------------------------------------------------------------------

    def send(self, destination: int, ack: int | None, messages: list[Message]) -> bool:
        """Write one frame to ``destination``; False if the caller must send it otherwise."""
        if self._closed:
            return False
        out = self._out.get(destination)
        if out is None:
            out = self._out[destination] = _Outgoing()
        writer = out.writer
        if writer is None or writer.is_closing():
            if writer is not None:
                self._down(destination, out)
            self._connect_soon(destination, out)
            self.counters["declined"] += 1
            return False
        if writer.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            self.counters["declined"] += 1
            return False
        frames = encode_frames(ack, messages)
        if frames is None:  # a message too large for any frame: the Ray call carries it
            self.counters["declined"] += 1
            return False
        for frame in frames:
            writer.write(frame)
        self.counters["frames_sent"] += len(frames)
        return True

    def _connect_soon(self, destination: int, out: _Outgoing) -> None:
        if out.connecting or time.monotonic() < out.retry_at:
            return
        out.connecting = True
        task = asyncio.get_running_loop().create_task(self._connect(destination, out))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, destination: int, out: _Outgoing) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            address = await asyncio.wait_for(self._resolve(destination), CONNECT_TIMEOUT)
            if address is None:
                raise ConnectionError(f"partition {destination} has no link server")
            reader, opened = await asyncio.wait_for(
                asyncio.open_connection(*address), CONNECT_TIMEOUT
            )
            writer = opened
            nonce = await asyncio.wait_for(reader.readexactly(16), CONNECT_TIMEOUT)
            mac = _mac(self._secret, nonce, self.hub, self.index)
            opened.write(_frame([PROTOCOL, self.hub, self.index, mac]))
            answer = msgpack.unpackb(
                await asyncio.wait_for(_read_frame(reader), CONNECT_TIMEOUT), raw=False
            )
            if answer != [PROTOCOL, "ok"]:
                raise ConnectionError(f"partition {destination} refused the link: {answer!r}")
            if self._closed:
                raise ConnectionError("links closed")
        except BaseException as exc:
            if writer is not None:
                writer.close()  # failed or cancelled halfway: never leave the socket open
            if not isinstance(exc, Exception):
                raise
            out.failures += 1
            delay = RETRY_AFTER[min(out.failures, len(RETRY_AFTER)) - 1]
            out.retry_at = time.monotonic() + delay
            if out.failures in (1, len(RETRY_AFTER)):
                self._log.info(
                    "peer link unavailable; using Ray calls",
                    peer=destination,
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=delay,
                )
            return
        finally:
            out.connecting = False
        out.writer = writer
        out.up_since = time.monotonic()
        # The server never writes after the handshake: a read returning means the
        # connection closed (the peer process died or restarted).
        watch = asyncio.get_running_loop().create_task(self._watch(destination, out, reader))
        self._tasks.add(watch)
        watch.add_done_callback(self._tasks.discard)
        if out.was_up:
            # Frames written just before the old connection died may be gone.
            self._on_reconnect(destination)
        out.was_up = True

    async def _watch(self, destination: int, out: _Outgoing, reader: asyncio.StreamReader) -> None:
        writer = out.writer
        try:
            await reader.read(1)
        except Exception:
            pass
        if writer is None or out.writer is not writer:
            return  # an older connection; the current one has its own watch
        if time.monotonic() - out.up_since >= STABLE_AFTER:
            out.failures = 0
        else:
            out.failures += 1
            out.retry_at = time.monotonic() + RETRY_AFTER[min(out.failures, len(RETRY_AFTER)) - 1]
        self._down(destination, out)
        self._connect_soon(destination, out)

    def _down(self, destination: int, out: _Outgoing) -> None:
        writer, out.writer = out.writer, None
        if writer is not None:
            writer.close()

    def forget(self, destination: int) -> None:
        """Drop the connection to ``destination`` (its address changed); reconnect lazily."""
        out = self._out.get(destination)
        if out is not None:
            self._down(destination, out)

    def connected(self) -> list[int]:
        """Peers this partition has an open outgoing link to."""
        return sorted(d for d, out in self._out.items() if out.writer is not None)

    async def close(self) -> None:
        """Close the server and every connection; later sends return False."""
        self._closed = True
        for destination, out in self._out.items():
            self._down(destination, out)
        for writer in list(self._incoming):
            writer.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
