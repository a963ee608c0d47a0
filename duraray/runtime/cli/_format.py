"""Parameter types and output of the ``duraray`` command: tables for people, JSON for
scripts, and the exit codes scripts can trust."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import click

from duraray.entities.ids import EntityId
from duraray.orchestrations.history import OrchestrationStatus
from duraray.orchestrations.ids import validate_instance_id
from duraray.runtime.client.sync import EntityMetadata, OrchestrationState, ParkedItem
from duraray.runtime.engine.codec import MAX_DEPTH

EXIT_OK = 0

EXIT_FAILED = 1

EXIT_USAGE = 2

EXIT_NOT_FOUND = 3

EXIT_CONFLICT = 4

#: The hub is not running, or no Ray cluster could be reached within --connect-timeout
#: (nothing answers, or it refused this process's authentication token).
EXIT_UNREACHABLE = 5

EXIT_TIMEOUT = 124


def _json_mode(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("json"))


class _JsonValue(click.ParamType):
    """A JSON value; ``@path`` reads it from a file and ``@-`` from stdin."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        text = value
        if value.startswith("@"):
            path = value[1:]
            try:
                text = sys.stdin.read() if path == "-" else Path(path).read_text()
            except OSError as exc:
                self.fail(f"cannot read {path!r}: {exc.strerror}", param, ctx)
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.fail(
                f"malformed JSON {value!r}: {exc.msg} at column {exc.colno} "
                """(strings need JSON quotes, e.g. '"text"')""",
                param,
                ctx,
            )


class _InstanceId(click.ParamType):
    name = "instance_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return validate_instance_id(value)
        except (TypeError, ValueError) as exc:
            self.fail(str(exc), param, ctx)


class _EntityIdType(click.ParamType):
    name = "@name@key"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, EntityId):
            return value
        try:
            return EntityId.parse(value)
        except (TypeError, ValueError) as exc:
            self.fail(str(exc), param, ctx)


class _DateTime(click.ParamType):
    """An ISO 8601 date or date-time; without a zone it is UTC."""

    name = "iso8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(
                f"{value!r} is not an ISO 8601 date or time "
                "(e.g. 2026-01-31 or 2026-01-31T12:00:00Z)",
                param,
                ctx,
            )
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


#: Payloads nest at most the codec's MAX_DEPTH levels, but records stored before that limit
#: may nest deeper or hold ints too wide for Python to print (over 4,300 digits): such a part
#: prints as ``<unrenderable: ...>`` (as in the HTTP API) instead of failing the command.
_RENDER_DEPTH = 2 * MAX_DEPTH
_RENDER_INT_BITS = 14_000


def _jsonable(value: Any, depth: int = _RENDER_DEPTH) -> Any:
    """A JSON-ready copy of a payload or record: ISO datetimes, base64 bytes, plain lists.

    An undecodable payload (``UndecodablePayload``) prints as its ``<undecodable ...>`` text.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        bits = value.bit_length()
        return value if bits <= _RENDER_INT_BITS else f"<unrenderable: an int of {bits} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value, depth)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, EntityId):
        return str(value)
    is_record = dataclasses.is_dataclass(value) and not isinstance(value, type)
    if is_record or isinstance(value, dict | list | tuple | set | frozenset):
        if depth <= 0:
            return f"<unrenderable: nests deeper than {_RENDER_DEPTH} levels>"
        depth -= 1
    if is_record:
        return {f.name: _jsonable(getattr(value, f.name), depth) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else str(_jsonable(k, depth)): _jsonable(v, depth)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth) for v in value]
    return str(value)  # UUID, Decimal and anything else: their text


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2, allow_nan=False))


def _done(ctx: click.Context, message: str, payload: dict[str, Any]) -> None:
    """Report a finished operation: a sentence, or ``payload`` as JSON."""
    if _json_mode(ctx):
        _emit_json(payload)
    else:
        click.echo(message)


def _htime(value: datetime | None) -> str:
    """A time for people: ISO 8601 in UTC, to the millisecond."""
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _compact(value: Any, limit: int | None = None) -> str:
    text = json.dumps(_jsonable(value), ensure_ascii=False)
    return _clip(text, limit)


def _clip(text: str, limit: int | None) -> str:
    text = " ".join(text.split()) if "\n" in text else text
    if limit is not None and len(text) > limit:
        return text[: max(0, limit - 3)] + "..."
    return text


def _failure_text(details: Any) -> str:
    """``type: message``, then the failures that caused it (``<- type: message``)."""
    if details is None:
        return "-"
    parts = []
    while details is not None:
        parts.append(f"{details.error_type}: {details.message}")
        details = details.inner
    return " <- ".join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in [headers, *rows]
    )


def _block(pairs: list[tuple[str, str]]) -> str:
    """``key  value`` lines with the values aligned."""
    width = max(len(key) for key, _ in pairs)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in pairs)


def _state_json(state: OrchestrationState, *, payloads: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "instance_id": state.instance_id,
        "name": state.name,
        "runtime_status": state.runtime_status.value,
        "created_at": state.created_at,
        "last_updated_at": state.last_updated_at,
        "completed_at": state.completed_at,
        "scheduled_start_at": state.scheduled_start_at,
    }
    if payloads:
        out.update(input=state.input, output=state.output, custom_status=state.custom_status)
    out.update(
        failure_details=state.failure_details,
        tags=state.tags,
        version=state.version,
        parent_instance_id=state.parent_instance_id,
    )
    return out


def _state_text(state: OrchestrationState) -> str:
    pairs = [
        ("instance id", state.instance_id),
        ("name", state.name),
        ("status", state.runtime_status.value),
    ]
    if state.custom_status is not None:
        pairs.append(("custom status", _compact(state.custom_status)))
    pairs += [
        ("created", _htime(state.created_at)),
        ("last updated", _htime(state.last_updated_at)),
    ]
    if state.completed_at is not None:
        pairs.append(("completed", _htime(state.completed_at)))
    if state.scheduled_start_at is not None:
        pairs.append(("scheduled start", _htime(state.scheduled_start_at)))
    if state.parent_instance_id:
        pairs.append(("parent", state.parent_instance_id))
    if state.version:
        pairs.append(("version", state.version))
    if state.tags:
        pairs.append(("tags", _compact(state.tags)))
    if state.input is not None:
        pairs.append(("input", _compact(state.input)))
    if state.output is not None:
        pairs.append(("output", _compact(state.output)))
    if state.failure_details is not None:
        pairs.append(("failure", _failure_text(state.failure_details)))
    return _block(pairs)


def _show_state(ctx: click.Context, state: OrchestrationState, *, waited: bool) -> None:
    """Print a state; after a wait, exit 1 if the instance FAILED or was TERMINATED."""
    if _json_mode(ctx):
        _emit_json(_state_json(state))
    else:
        click.echo(_state_text(state))
    if waited and state.runtime_status in (
        OrchestrationStatus.FAILED,
        OrchestrationStatus.TERMINATED,
    ):
        ctx.exit(EXIT_FAILED)


def _event_json(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(event).__name__}
    for f in dataclasses.fields(event):
        out[f.name] = _jsonable(getattr(event, f.name))
    return out


def _event_detail(event: Any) -> str:
    parts = []
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if f.name in _NOT_IN_DETAIL or value is None:
            continue
        if f.name not in _PAYLOAD_FIELDS and value == f.default:
            continue
        if f.name in _PAYLOAD_FIELDS or isinstance(value, list | dict):
            text = _compact(value, 60)
        elif isinstance(value, datetime):
            text = _htime(value)
        elif isinstance(value, enum.Enum):
            text = str(value.value)
        elif f.name == "failure":
            text = _failure_text(value)
        else:
            text = str(value)
        parts.append(f"{f.name}={text}")
    return _clip(" ".join(parts), _DETAIL_WIDTH)


def _history_table(events: list[Any]) -> str:
    names: dict[int, str] = {}
    rows = []
    for index, event in enumerate(events, 1):
        task_id = next((getattr(event, a) for a in _TASK_ID_FIELDS if hasattr(event, a)), None)
        name = getattr(event, "name", None) or getattr(event, "operation", None)
        if name is not None and hasattr(event, "event_id"):
            names[event.event_id] = name
        elif name is None and task_id is not None:
            name = names.get(task_id)
        rows.append(
            [
                str(index),
                _htime(event.timestamp),
                type(event).__name__,
                "" if task_id is None else str(task_id),
                name or "",
                _event_detail(event),
            ]
        )
    return _table(["#", "TIME", "EVENT TYPE", "TASK ID", "NAME", "DETAIL"], rows)


def _entity_json(meta: EntityMetadata) -> dict[str, Any]:
    return {
        "entity_id": str(meta.id),
        "name": meta.id.name,
        "key": meta.id.key,
        "last_modified": meta.last_modified,
        "locked_by": meta.locked_by,
        "backlog_queue_size": meta.backlog_queue_size,
        "state": meta.state,
    }


def _parked_json(item: ParkedItem) -> dict[str, Any]:
    # The payload (an encoded message, up to max_payload_bytes) is left out, as over HTTP
    # by default: Client.get_parked_items has it for whoever replays one by hand.
    return {
        "partition": item.partition,
        "kind": item.kind,
        "target": item.target,
        "parked_at": item.parked_at,
        "error": item.error,
        "detail": item.detail,
    }


def _parked_table(items: list[ParkedItem]) -> str:
    rows = [
        [
            str(item.partition),
            item.kind,
            _clip(item.target, 60),
            _htime(item.parked_at),
            _clip(item.error, _DETAIL_WIDTH),
        ]
        for item in items
    ]
    return _table(["PARTITION", "KIND", "TARGET", "PARKED AT", "ERROR"], rows)


def _progress_enabled(ctx: click.Context) -> bool:
    """Draw a spinner only for people: never with --json, only when on a terminal."""
    if _json_mode(ctx):
        return False
    forced = (ctx.obj or {}).get("progress")
    if forced is not None:
        return bool(forced)
    return sys.stdout.isatty() and sys.stderr.isatty()


class _Spinner:
    """A one-line spinner on stderr (label, last known status, elapsed seconds)."""

    FRAMES = "|/-\\"

    def __init__(self, enabled: bool, label: str, status: str) -> None:
        self.enabled = enabled
        self.label = label
        self.status = status
        self._started = time.monotonic()
        self._tick = 0
        self._width = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Spinner:
        if self.enabled:
            self._draw()
            self._thread = threading.Thread(target=self._run, name="duraray-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        with self._lock:
            click.echo("\r" + " " * self._width + "\r", err=True, nl=False)

    def update(self, status: str) -> None:
        self.status = status

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            elapsed = time.monotonic() - self._started
            frame = self.FRAMES[self._tick % len(self.FRAMES)]
            self._tick += 1
            text = f"{frame} {self.label} ({self.status}, {elapsed:.0f} s)"
            padding = " " * max(0, self._width - len(text))
            self._width = len(text)
            click.echo("\r" + text + padding, err=True, nl=False)


_SPIN_REFRESH = 1.0  # with a spinner: refresh the shown status this often (seconds)


_DETAIL_WIDTH = 100


JSON_VALUE = _JsonValue()


INSTANCE_ID = _InstanceId()


ENTITY_ID = _EntityIdType()


ISO_DATETIME = _DateTime()


_TASK_ID_FIELDS = ("event_id", "task_scheduled_id", "timer_id")


_NOT_IN_DETAIL = frozenset(
    {
        "timestamp",
        "name",
        "operation",
        "execution_id",
        "parent_execution_id",
        "critical_section_id",
        *_TASK_ID_FIELDS,
    }
)


_PAYLOAD_FIELDS = frozenset({"input", "result", "output"})
