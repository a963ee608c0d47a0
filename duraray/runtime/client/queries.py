"""Queries over every partition: one page merged from all of them, and the tokens between pages.

Each partition answers a query with at most a page of its own matches, in key order
(instances by creation time then id, entities by id); the client merges the answers,
keeps the first page and, if any partition may hold more, hands back a continuation
token naming the last key of the page, from which every partition resumes.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from duraray import _limits
from duraray.runtime.client.results import (
    EntityMetadata,
    OrchestrationState,
    OrchestrationStatus,
    Page,
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
) -> Page[OrchestrationState]:
    """One page of instances matching the filters, oldest first (``Client.query_instances``)."""
    _limits.check_page_size(page_size)
    _limits.check_text(instance_id_prefix, "instance_id_prefix")
    created_from = utc(created_time_from, "created_time_from")
    created_to = utc(created_time_to, "created_time_to")
    after = _decode_token(continuation_token, _INSTANCE_TOKEN)
    results = router.call_all(
        "query",
        {
            "statuses": statuses(runtime_status),
            "created_from": created_from,
            "created_to": created_to,
            "prefix": instance_id_prefix,
            "after": after,
            "limit": page_size,
            "fetch_payloads": fetch_payloads,
        },
    )
    merged = sorted((rec for part in results for rec in part), key=lambda rec: _record_key(rec))
    page = merged[:page_size]
    more = len(merged) > page_size or any(len(part) >= page_size for part in results)
    token = _encode_token(_record_key(page[-1]), _INSTANCE_TOKEN) if page and more else None
    return Page([orchestration_state(rec) for rec in page], token)


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
    if kind == _INSTANCE_TOKEN and not 9 <= len(key) <= _limits.MAX_STORE_KEY_BYTES:
        raise malformed
    if kind == _ENTITY_TOKEN:
        try:
            key.decode()
        except UnicodeDecodeError:
            raise malformed from None
    return key
