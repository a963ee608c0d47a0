"""Queries over every partition: one page merged from all of them, and the tokens between pages.

Each partition answers a query with its matches in key order (instances by creation time
then id, entities by id); the client merges the answers into a page and, if any
partition may hold more, hands back a continuation token naming the last key of the
page, from which every partition resumes. Instance queries ask each partition for about
its share of the page and read ahead while a caller pages on (``query_instances``);
entity queries ask each partition for a whole page.
"""

from __future__ import annotations

import base64
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from duraray import _limits
from duraray.runtime.client.results import (
    EntityMetadata,
    OrchestrationState,
    OrchestrationStatus,
    Page,
    PurgeResult,
    entity_metadata,
    orchestration_state,
)
from duraray.runtime.client.transport import Router
from duraray.runtime.engine import codec
from duraray.runtime.engine import records as r
from duraray.runtime.engine.records import InstanceRecord, ParkedItem

T = TypeVar("T")

# A continuation token: base64url of kind (1 byte), the last key of the page, CRC-32 of both.
# The kind and checksum make a token of the other query, or garbage, a ValueError rather
# than a silently wrong page.
_INSTANCE_TOKEN = b"I"
_NEWEST_TOKEN = b"N"
_ENTITY_TOKEN = b"E"


def query_instances(
    router: Router,
    *,
    runtime_status: Any,
    created_time_from: datetime | None,
    created_time_to: datetime | None,
    instance_id_prefix: str | None,
    page_size: int,
    continuation_token: str | None,
    fetch_payloads: bool,
    newest_first: bool = False,
    name: str | None = None,
    tags: dict[str, str] | None = None,
    cursors: OpenCursors | None = None,
) -> Page[OrchestrationState]:
    """One page of instances matching the filters (``Client.query_instances``).

    The partitions' answers are merged by creation time (then id): each partition is
    asked for about its share of a page, then, while the caller keeps paging, for
    growing chunks read ahead (kept in ``cursors`` under the next page's token), so a
    page costs about the rows it shows, at page 1,000 as at page 1. A token stays valid
    on its own: without its cursors (another client, or after ``CURSOR_TTL_S``) the
    partitions are asked again from the token's key.
    """
    _limits.check_page_size(page_size)
    _limits.check_text(instance_id_prefix, "instance_id_prefix")
    if name is not None:
        _limits.check_name(name, "orchestration name")
    _limits.check_tags(tags)
    if not isinstance(newest_first, bool):
        raise TypeError("newest_first must be a bool")
    kind = _NEWEST_TOKEN if newest_first else _INSTANCE_TOKEN
    args: dict[str, Any] = {
        "statuses": statuses(runtime_status),
        "created_from": utc(created_time_from, "created_time_from"),
        "created_to": utc(created_time_to, "created_time_to"),
        "prefix": instance_id_prefix,
        "fetch_payloads": fetch_payloads,
        "newest_first": newest_first,
        "name": name,
        "tags": dict(tags) if tags else None,
    }
    after = _decode_token(continuation_token, kind)
    query_key = repr(sorted(args.items()))
    open_ = None if cursors is None else cursors.take(query_key, continuation_token)
    parts = open_ or [_Cursor(after) for _ in range(router.transport.partition_count)]
    # About a share of the page, and some.
    first_ask = min(_limits.MAX_PAGE_SIZE, -(-page_size // len(parts)) * 5 // 4 + 4)
    page: list[InstanceRecord] = []
    while len(page) < page_size:
        if any(not part.rows and not part.done for part in parts):
            _refill(router, args, parts, first_ask, page_size)
        heads = [part for part in parts if part.rows]
        if not heads:
            break
        pick = (max if newest_first else min)(heads, key=lambda part: part.rows[0][0])
        page.append(pick.rows.popleft()[1])
    more = any(part.rows or not part.done for part in parts)
    token = _encode_token(_record_key(page[-1]), kind) if page and more else None
    if token is not None and cursors is not None:
        if continuation_token is not None:
            # A caller paging on likely asks for the next page too: partitions running
            # low read on meanwhile (not for a first page, which a refresh asks again).
            _read_ahead(router, args, parts, page_size)
        cursors.put(query_key, token, parts)
    return Page([orchestration_state(rec) for rec in page], token)


def purge_by(
    router: Router,
    created_time_from: datetime | None,
    created_time_to: datetime | None,
    runtime_status: Any,
) -> PurgeResult:
    """Delete finished instances in the range on every partition
    (``Client.purge_orchestrations_by``)."""
    counts = router.call_all(
        "purge_by",
        {
            "created_from": utc(created_time_from, "created_time_from"),
            "created_to": utc(created_time_to, "created_time_to"),
            "statuses": statuses(runtime_status),
        },
        mutating=True,
    )
    return PurgeResult(sum(counts))


def count_instances(
    router: Router,
    *,
    runtime_status: Any,
    created_time_from: datetime | None,
    created_time_to: datetime | None,
    instance_id_prefix: str | None,
    name: str | None,
    tags: dict[str, str] | None,
) -> dict[OrchestrationStatus, int]:
    """Instances by status over every partition (``Client.count_instances``)."""
    _limits.check_text(instance_id_prefix, "instance_id_prefix")
    if name is not None:
        _limits.check_name(name, "orchestration name")
    _limits.check_tags(tags)
    wanted = statuses(runtime_status)
    answers = router.call_all(
        "count",
        {
            "statuses": wanted,
            "created_from": utc(created_time_from, "created_time_from"),
            "created_to": utc(created_time_to, "created_time_to"),
            "prefix": instance_id_prefix,
            "name": name,
            "tags": dict(tags) if tags else None,
        },
    )
    shown = [OrchestrationStatus(s) for s in wanted] if wanted else list(OrchestrationStatus)
    totals = dict.fromkeys(shown, 0)
    for counts in answers:
        for value, n in counts.items():
            status = OrchestrationStatus(value)
            if status in totals:
                totals[status] += n
    return totals


def _refill(
    router: Router, args: dict[str, Any], parts: list[_Cursor], first: int, page_size: int
) -> None:
    """Wait for the next rows of every partition whose buffer ran dry (and that may hold
    more), asking those with nothing on the way, all at once."""
    for index, part in enumerate(parts):
        if not part.rows and not part.done and part.pending is None:
            size = first if not part.asked else _next_size(part, page_size, args)
            _ask(router, args, index, part, size)
    for part in parts:
        if not part.rows and part.pending is not None:
            _land(part)


def _read_ahead(router: Router, args: dict[str, Any], parts: list[_Cursor], page_size: int) -> None:
    """Ask a partition for its next rows while it still has some (less than a page, or
    half of its last chunk): its answer comes while the caller works on this page."""
    for index, part in enumerate(parts):
        if part.pending is not None and part.pending.done():
            if part.pending.exception() is not None:
                part.pending = None  # asked again when its rows are needed
            else:
                _land(part)
        if part.done or part.pending is not None or not part.asked:
            continue
        if len(part.rows) < max(page_size, part.asked // 2):
            _ask(router, args, index, part, _next_size(part, page_size, args))


def _next_size(part: _Cursor, page_size: int, args: dict[str, Any]) -> int:
    # Rows with their inputs and outputs may be large: read less of them ahead.
    most = READ_AHEAD_MAX if not args["fetch_payloads"] else READ_AHEAD_WITH_PAYLOADS
    return min(max(most, page_size), max(2 * part.asked, page_size))


def _ask(router: Router, args: dict[str, Any], index: int, part: _Cursor, size: int) -> None:
    part.asked = size
    part.pending = router.transport.submit(
        index, "query", {**args, "after": part.after, "limit": size}
    )


def _land(part: _Cursor) -> None:
    """Take in the answer on its way (waiting for it)."""
    assert part.pending is not None
    future, part.pending = part.pending, None
    rows = future.result()
    part.rows.extend((_record_key(row), row) for row in rows)
    if rows:
        part.after = part.rows[-1][0]
    part.done = len(rows) < part.asked


#: Most rows one partition is asked for at once while a caller pages on (without, and
#: with their payloads; never fewer than a page).
READ_AHEAD_MAX = 5000
READ_AHEAD_WITH_PAYLOADS = 500
#: How long the rows read ahead for the next page are kept for it (they are as old as
#: that at most: a page of a paged query is not one snapshot either).
CURSOR_TTL_S = 10.0


@dataclass
class _Cursor:
    """One partition's place in a paged query: rows read ahead, and where to go on."""

    after: bytes | None
    #: (key, record) of the rows read and not yet shown
    rows: deque[tuple[bytes, InstanceRecord]] = field(default_factory=deque)
    done: bool = False
    #: rows asked for last (the answer is complete when fewer come back)
    asked: int = 0
    #: the answer to the last ask, while it is on its way
    pending: Future[Any] | None = None


class OpenCursors:
    """The read-ahead of a client's paged queries, by query and next page's token (a
    few, for a short while: a token not followed soon is answered from the partitions)."""

    def __init__(self, capacity: int = 16) -> None:
        self._open: OrderedDict[tuple[str, str], tuple[float, list[_Cursor]]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def take(self, query_key: str, token: str | None) -> list[_Cursor] | None:
        """The cursors left for ``token`` of this query (removed), or None."""
        if token is None:
            return None
        with self._lock:
            entry = self._open.pop((query_key, token), None)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, query_key: str, token: str, parts: list[_Cursor]) -> None:
        """Keep ``parts`` for the page after ``token``."""
        now = time.monotonic()
        with self._lock:
            self._open[(query_key, token)] = (now + CURSOR_TTL_S, parts)
            while self._open and (
                len(self._open) > self._capacity or next(iter(self._open.values()))[0] < now
            ):
                self._open.popitem(last=False)


def query_entities(
    router: Router,
    *,
    name: str | None,
    key_prefix: str | None,
    include_state: bool,
    page_size: int,
    continuation_token: str | None,
) -> Page[EntityMetadata]:
    """One page of entities, by id, filtered by name and key prefix (``Client.query_entities``)."""
    _limits.check_page_size(page_size)
    if name is not None:
        _limits.check_name(name, "entity name")
    _limits.check_text(key_prefix, "key_prefix")
    if key_prefix and not name:
        raise ValueError("key_prefix needs name")
    prefix = "@" if not name else f"@{name.lower()}@{key_prefix or ''}"
    key = _decode_token(continuation_token, _ENTITY_TOKEN)
    after = None if key is None else key.decode()
    results = router.call_all(
        "query_entities",
        {"prefix": prefix, "after": after, "limit": page_size, "include_state": include_state},
    )
    merged = sorted((rec for part in results for rec in part), key=lambda rec: rec.entity_id)
    page = merged[:page_size]
    more = len(merged) > page_size or any(len(part) >= page_size for part in results)
    token = _encode_token(page[-1].entity_id.encode(), _ENTITY_TOKEN) if page and more else None
    return Page([entity_metadata(rec) for rec in page], token)


def parked_items(router: Router, limit: int) -> list[ParkedItem]:
    """At most ``limit`` parked items of the hub, by partition then key
    (``Client.get_parked_items``).

    Every partition is asked at once for at most ``limit`` of its rows (the engine's
    ``parked`` operation, in key order) and the answers are joined in partition order:
    exact, since each partition's first ``limit`` rows are all a cut at ``limit`` can
    keep. Newest first is not offered: a partition lists its rows by key, not by time, so
    it could only be had by reading every row of every partition.
    """
    _limits.check_page_size(limit, "limit")
    answers = router.call_all("parked", {"after": None, "limit": limit})
    items: list[ParkedItem] = [record for rows in answers for _key, record in rows]
    return items[:limit]


def all_pages(query: Callable[..., Page[T]], filters: dict[str, Any]) -> list[T]:
    """Follow continuation tokens until the last page; every item once, in order."""
    out: list[T] = []
    token = None
    while True:
        page = query(continuation_token=token, **filters)
        out.extend(page.items)
        token = page.continuation_token
        if token is None:
            return out


def utc(value: datetime | None, what: str) -> datetime | None:
    """A time argument checked against the store's range (naive: UTC), or None."""
    return None if value is None else _limits.check_time(value, what)


def statuses(value: Any) -> list[str] | None:
    """A status filter (one status or name, or several) as status values; None: any."""
    if value is None:
        return None
    if isinstance(value, bytes):
        raise TypeError("runtime_status must be an OrchestrationStatus, a name, or several")
    items = [value] if isinstance(value, OrchestrationStatus | str) else list(value)
    out = []
    for item in items:
        if isinstance(item, OrchestrationStatus):
            out.append(item.value)
        elif isinstance(item, str):
            out.append(OrchestrationStatus(item).value)
        else:
            raise TypeError(
                f"runtime_status items must be OrchestrationStatus or names, got "
                f"{type(item).__name__}"
            )
    return out


def _record_key(record: InstanceRecord) -> bytes:
    return r.created_key(codec.utc_micros(record.created_at), record.instance_id)


def _encode_token(key: bytes, kind: bytes) -> str:
    body = kind + key
    return base64.urlsafe_b64encode(body + zlib.crc32(body).to_bytes(4, "big")).decode()


def _decode_token(token: str | None, kind: bytes) -> bytes | None:
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"a continuation token is a str, not {type(token).__name__}")
    malformed = ValueError(
        f"malformed continuation token {token[:64]!r}: pass back the token of the previous "
        f"page of the same query"
    )
    try:
        raw = base64.b64decode(token.encode(), altchars=b"-_", validate=True)
    except (ValueError, UnicodeEncodeError):
        raise malformed from None
    body, crc = raw[:-4], raw[-4:]
    if len(raw) < 5 or body[:1] != kind or zlib.crc32(body).to_bytes(4, "big") != crc:
        raise malformed
    key = body[1:]
    if (
        kind in (_INSTANCE_TOKEN, _NEWEST_TOKEN)
        and not 9 <= len(key) <= _limits.MAX_STORE_KEY_BYTES
    ):
        raise malformed
    if kind == _ENTITY_TOKEN:
        try:
            key.decode()
        except UnicodeDecodeError:
            raise malformed from None
    return key
