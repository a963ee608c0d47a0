"""Tracing with OpenTelemetry: the one module of duraray that imports it, and only if present.

Spans go to the global tracer provider (``opentelemetry.trace.get_tracer_provider()``),
OpenTelemetry's convention for libraries: the application (or, in a Ray process, the
hub's ``otel_setup`` function, see ``setup``) chooses the SDK, exporters and sampling.
Without the ``otel`` extra installed nothing of OpenTelemetry is imported and every
function here is a no-op; with it installed but no provider set, ``enabled()`` is False
and the engine records and emits nothing.

Trace contexts travel and are stored as small carriers, ``dict[str, str]`` with the W3C
``traceparent`` (and ``tracestate``) keys, formatted and parsed here without
OpenTelemetry so that a process without it still carries a trace through. The context of
an orchestration execution also names its parent span (``parent_span_id``) and its start
(``start_us``): its span id is chosen when the execution starts (``new_context``) and
stored with the instance, so that its activities, timers, entity operations and
sub-orchestrations name it as their parent while it runs, even across restarts, and the
execution's own span is emitted with exactly that id when the execution ends
(``SpanRecord.own``). The SDK offers no public way to choose a span's id, so the tracer's
id generator is wrapped (``_PresetIds``) to hand out the chosen ids for that one call.

Emitting a span never raises: a failing provider or exporter is logged, and the work the
span describes goes on.
"""

from __future__ import annotations

import contextlib
import importlib
import random
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
except ImportError:  # the ``otel`` extra is not installed: everything here is a no-op
    _trace = None  # type: ignore[assignment]
    _context = None  # type: ignore[assignment]

log = structlog.get_logger("duraray.tracing")

R = TypeVar("R")

#: The instrumentation scope of every duraray span.
SCOPE = "duraray"

# Carrier keys: the W3C ones, then duraray's own for an execution's stored context.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
PARENT_SPAN_ID = "parent_span_id"
START_US = "start_us"

_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SPAN_ID_RE = re.compile(r"[0-9a-f]{16}")

#: Ids of new spans and traces: a generator of its own (not the ``random`` module's
#: functions, which the determinism warnings watch while orchestrator code runs).
_ids = random.Random()


# -- carriers (no OpenTelemetry needed) ------------------------------------------------------


def parse(carrier: Mapping[str, str] | None) -> tuple[int, int, int] | None:
    """(trace id, span id, flags) of a carrier's ``traceparent``; None if absent or malformed."""
    if not carrier:
        return None
    value = carrier.get(TRACEPARENT)
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT_RE.fullmatch(value.strip().lower())
    if match is None or match.group(1) == "ff":
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(match.group(4), 16)


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def _new_id(bits: int) -> int:
    value = 0
    while not value:
        value = _ids.getrandbits(bits)
    return value


def carrier(context: Mapping[str, str] | None) -> dict[str, str] | None:
    """What a child of the span of ``context`` is handed: its ``traceparent`` (and
    ``tracestate``), without the keys only the execution itself needs."""
    if context is None or TRACEPARENT not in context:
        return None
    out = {TRACEPARENT: context[TRACEPARENT]}
    if TRACESTATE in context:
        out[TRACESTATE] = context[TRACESTATE]
    return out


def new_context(
    parent: Mapping[str, str] | None, start_us: int, *, root: bool
) -> dict[str, str] | None:
    """The context of a span started now whose id is chosen now (an execution's).

    A child of ``parent`` (a carrier) when it holds a valid ``traceparent``; else a new
    trace when ``root`` is True; else None (nothing to trace).
    """
    parsed = parse(parent)
    if parsed is None:
        if not root:
            return None
        trace_id, parent_span, flags, state = _new_id(128), 0, 1, None
    else:
        assert parent is not None
        trace_id, parent_span, flags = parsed
        state = parent.get(TRACESTATE)
    out = {TRACEPARENT: _traceparent(trace_id, _new_id(64), flags), START_US: str(start_us)}
    if parent_span:
        out[PARENT_SPAN_ID] = f"{parent_span:016x}"
    if isinstance(state, str) and state:
        out[TRACESTATE] = state
    return out


def start_us(context: Mapping[str, str], default: int) -> int:
    """When the execution of ``context`` started (microseconds since the epoch)."""
    value = context.get(START_US)
    return int(value) if isinstance(value, str) and value.isdigit() else default


# -- the provider ------------------------------------------------------------------------------


def available() -> bool:
    """True if OpenTelemetry (the ``otel`` extra) is importable in this process."""
    return _trace is not None


def enabled() -> bool:
    """True if spans would go anywhere: OpenTelemetry is installed and a tracer provider
    other than the default no-op one is set."""
    if _trace is None:
        return False
    provider = _trace.get_tracer_provider()
    return not isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider)


_setup_lock = threading.Lock()
_setup_done: set[str] = set()


def setup(spec: str | None) -> None:
    """Call the hub's ``otel_setup`` function (``"module:function"``) once in this process.

    Every process that hosts a partition or runs activities calls this before it traces
    anything. A setup that fails is logged, once, and the process runs without tracing.
    """
    if spec is None or spec in _setup_done:
        return
    with _setup_lock:
        if spec in _setup_done:
            return
        _setup_done.add(spec)  # once, even if it fails: not again with every activity
        try:
            resolve(spec)()
        except Exception:
            log.exception("otel_setup failed; this process emits no spans", otel_setup=spec)


def resolve(spec: str) -> Callable[[], Any]:
    """The function named by ``"module:function"`` (the function may be a dotted path)."""
    module_name, _, attr = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"otel_setup {spec!r} names {type(target).__name__}, not a function")
    fn: Callable[[], Any] = target
    return fn


class _PresetIds:
    """Wraps a tracer's id generator: hands out the ids set for the next span started on
    this thread (a span whose id was chosen and stored beforehand), else the generator's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.next = threading.local()

    def generate_span_id(self) -> int:
        value: int = getattr(self.next, "span_id", 0)
        if value:
            self.next.span_id = 0
            return value
        generated: int = self.inner.generate_span_id()
        return generated

    def generate_trace_id(self) -> int:
        value: int = getattr(self.next, "trace_id", 0)
        if value:
            self.next.trace_id = 0
            return value
        generated: int = self.inner.generate_trace_id()
        return generated

    def is_trace_id_random(self) -> bool:
        check = getattr(self.inner, "is_trace_id_random", None)
        return bool(check()) if check is not None else False


_tracer_cache: tuple[Any, Any, _PresetIds | None] | None = None
_warned: set[str] = set()


def _tracer() -> tuple[Any, _PresetIds | None]:
    """duraray's tracer of the current global provider, with its id generator wrapped
    (None where the provider's tracers have none: not the SDK's)."""
    global _tracer_cache
    assert _trace is not None
    provider = _trace.get_tracer_provider()
    cached = _tracer_cache
    if cached is not None and cached[0] is provider:
        return cached[1], cached[2]
    tracer: Any = provider.get_tracer(SCOPE)
    ids = getattr(tracer, "id_generator", None)
    preset: _PresetIds | None = None
    if isinstance(ids, _PresetIds):
        preset = ids
    elif ids is not None:
        preset = _PresetIds(ids)
        tracer.id_generator = preset
    _tracer_cache = (provider, tracer, preset)
    return tracer, preset


def _warn_once(key: str, message: str, **fields: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, **fields)


# -- spans emitted from recorded times ----------------------------------------------------------

#: Span kinds by name (the engine names them without importing OpenTelemetry).
KINDS = ("internal", "server", "client", "producer", "consumer")


@dataclass(slots=True)
class SpanRecord:
    """A finished piece of work, to emit as a span once the batch that recorded it commits.

    ``own``: the span's context chosen beforehand (an execution: its ids, its parent span
    and its trace come from it); otherwise the span gets new ids as a child of ``parent``
    (a carrier). ``error``: (type, message, stack) of a failure, or None.
    """

    name: str
    kind: str
    start_us: int
    end_us: int
    parent: Mapping[str, str] | None = None
    own: Mapping[str, str] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str, str | None] | None = None


def emit(spans: list[SpanRecord]) -> None:
    """Emit recorded spans to the global provider; never raises."""
    if not spans or _trace is None:
        return
    try:
        tracer, preset = _tracer()
    except Exception:
        log.exception("no tracer: spans dropped", spans=len(spans))
        return
    for record in spans:
        try:
            _emit(tracer, preset, record)
        except Exception as exc:
            _warn_once(f"emit:{type(exc).__name__}", "a span could not be emitted", error=repr(exc))


def _span_context(trace_id: int, span_id: int, flags: int, state: str | None) -> Any:
    assert _trace is not None
    trace_state = _trace.TraceState.from_header([state]) if state else None
    return _trace.SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=_trace.TraceFlags(flags),
        trace_state=trace_state,
    )


def _parent_context(span_context: Any) -> Any:
    """An OpenTelemetry context whose current span is ``span_context`` (None: a root);
    never the calling thread's current context."""
    assert _trace is not None and _context is not None
    empty = _context.Context()
    if span_context is None:
        return empty
    return _trace.set_span_in_context(_trace.NonRecordingSpan(span_context), empty)


def _emit(tracer: Any, preset: _PresetIds | None, record: SpanRecord) -> None:
    assert _trace is not None
    trace_id = span_id = 0
    parent = None
    if record.own is not None:
        own = parse(record.own)
        if own is None:
            return
        trace_id, span_id, flags = own
        state = record.own.get(TRACESTATE)
        parent_hex = record.own.get(PARENT_SPAN_ID)
        if isinstance(parent_hex, str) and _SPAN_ID_RE.fullmatch(parent_hex):
            parent = _span_context(trace_id, int(parent_hex, 16), flags, state)
        if preset is None:
            _warn_once(
                "preset",
                "the tracer provider cannot take chosen span ids (not the OpenTelemetry "
                "SDK's): orchestration spans get new ids, their children lose their parent",
            )
    else:
        parsed = parse(record.parent)
        if parsed is not None:
            assert record.parent is not None
            parent = _span_context(*parsed, record.parent.get(TRACESTATE))
    kind = getattr(_trace.SpanKind, record.kind.upper(), _trace.SpanKind.INTERNAL)
    if preset is not None and span_id:
        preset.next.span_id = span_id
        preset.next.trace_id = trace_id if parent is None else 0
    try:
        span = tracer.start_span(
            record.name,
            context=_parent_context(parent),
            kind=kind,
            attributes=record.attributes,
            start_time=record.start_us * 1000,
        )
    finally:
        if preset is not None:
            preset.next.span_id = preset.next.trace_id = 0
    if record.error is not None:
        _set_error(span, record.error, record.end_us * 1000)
    span.end(end_time=max(record.end_us, record.start_us) * 1000)


def _set_error(span: Any, error: tuple[str, str, str | None], when_ns: int | None) -> None:
    """Mark ``span`` failed, with an ``exception`` event (OpenTelemetry's names)."""
    assert _trace is not None
    error_type, message, stack = error
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, message))
    span.set_attribute("error.type", error_type)
    event = {"exception.type": error_type, "exception.message": message}
    if stack:
        event["exception.stacktrace"] = stack
    span.add_event("exception", event, timestamp=when_ns)


# -- spans around live work -------------------------------------------------------------------


def traced(
    parent: Mapping[str, str] | None,
    name: str,
    attributes: dict[str, Any],
    run: Callable[[], R],
    error_of: Callable[[R], tuple[str, str, str | None] | None],
) -> R:
    """``run()`` inside a span (a child of ``parent``, current while it runs, so spans of
    the code it calls nest under it); ``error_of`` says from its result whether it failed.
    Without a parent or a provider: just ``run()``."""
    if parent is None or not enabled():
        return run()
    try:
        tracer, _ = _tracer()
        parsed = parse(parent)
        span_context = None if parsed is None else _span_context(*parsed, parent.get(TRACESTATE))
        assert _trace is not None and _context is not None
        span = tracer.start_span(
            name,
            context=_parent_context(span_context),
            kind=_trace.SpanKind.SERVER,
            attributes=attributes,
        )
        token = _context.attach(_trace.set_span_in_context(span))
    except Exception as exc:
        _warn_once(f"live:{type(exc).__name__}", "a span could not be started", error=repr(exc))
        return run()
    result: Any = None
    try:
        result = run()
        return result
    finally:
        try:
            _context.detach(token)
            error = error_of(result) if result is not None else None
            if error is not None:
                _set_error(span, error, None)
            span.end()
        except Exception as exc:
            _warn_once(f"end:{type(exc).__name__}", "a span could not be ended", error=repr(exc))


@contextlib.contextmanager
def client_span(name: str, attributes: dict[str, Any]) -> Iterator[dict[str, str] | None]:
    """A client call's span, when a trace is active in the caller's context: yields the
    carrier that makes the hub's work its children, else None (and records nothing).
    The call's own error is recorded on the span and raised as it is; a failure of the
    tracing itself never reaches the caller."""
    started = _start_client_span(name, attributes)
    if started is None:
        yield None
        return
    span, token = started
    try:
        yield _carrier_of(span)
    except BaseException as exc:
        try:
            span.record_exception(exc)
            span.set_status(_trace.Status(_trace.StatusCode.ERROR, str(exc)))
        except Exception:
            pass
        raise
    finally:
        try:
            _context.detach(token)
        finally:
            try:
                span.end()
            except Exception as exc:
                _warn_once(
                    f"end:{type(exc).__name__}", "a span could not be ended", error=repr(exc)
                )


def _start_client_span(name: str, attributes: dict[str, Any]) -> tuple[Any, Any] | None:
    if _trace is None or not enabled():
        return None
    try:
        if not _trace.get_current_span().get_span_context().is_valid:
            return None  # no trace active: the orchestration's own span will be the root
        tracer, _ = _tracer()
        span = tracer.start_span(name, kind=_trace.SpanKind.PRODUCER, attributes=attributes)
        return span, _context.attach(_trace.set_span_in_context(span))
    except Exception as exc:
        _warn_once(f"client:{type(exc).__name__}", "a span could not be started", error=repr(exc))
        return None


def _carrier_of(span: Any) -> dict[str, str] | None:
    try:
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        out = {TRACEPARENT: _traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))}
        state = ctx.trace_state.to_header() if ctx.trace_state else ""
        if state:
            out[TRACESTATE] = state
        return out
    except Exception:
        return None
