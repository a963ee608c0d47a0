"""Tracing with OpenTelemetry (the ``otel`` extra), in process: one trace per instance.

The SDK's in-memory exporter collects what the hub emits to the global tracer provider.
OpenTelemetry lets a process set its global provider once; these tests install one per
test and take it away afterwards (as OpenTelemetry's own test utilities do), so no other
test of the session runs traced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)
from opentelemetry.util._once import Once

import duraray as dr
from duraray.orchestrations import history as h
from duraray.runtime import tracing
from duraray.runtime.engine.requests import check_args
from duraray.testing import ManualClock, run_in_process

from .helpers import TIMEOUT, CallCounter, poll

app = dr.App("e2e-tracing", partitions=2)
attempts = CallCounter()


@app.activity
def reserve(ctx: dr.ActivityContext, order: str) -> str:
    return f"reserved {order}"


@app.activity
def pack(ctx: dr.ActivityContext, order: str) -> str:
    return f"packed {order}"


@app.activity
def flaky(ctx: dr.ActivityContext, order: str) -> str:
    attempts.hit((ctx.instance_id, ctx.attempt))
    if ctx.attempt == 1:
        raise RuntimeError("card declined")
    return f"charged {order}"


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: int) -> int:
        total = self.get_state(int, 0) + amount
        self.set_state(total)
        return total


@app.orchestration
def ship(ctx: dr.OrchestrationContext, order: str):
    return (yield ctx.call_activity(pack, input=order))


RETRY = dr.RetryPolicy(first_retry_interval=timedelta(seconds=1), max_number_of_attempts=3)


@app.orchestration
def demo(ctx: dr.OrchestrationContext, order: str):
    reserved = yield ctx.call_activity(reserve, input=order)
    yield ctx.create_timer(timedelta(minutes=5))
    shipped = yield ctx.call_sub_orchestrator(ship, input=order)
    approver = yield ctx.wait_for_external_event("approval")
    count = yield ctx.call_entity(dr.EntityId("counter", "orders"), "add", 1)
    charged = yield ctx.call_activity(flaky, input=order, retry_policy=RETRY)
    return [reserved, shipped, approver, count, charged]


@app.orchestration
def waits(ctx: dr.OrchestrationContext, order: str):
    first = yield ctx.call_activity(reserve, input=order)
    yield ctx.create_timer(timedelta(minutes=1))
    approver = yield ctx.wait_for_external_event("approval")
    return [first, approver, (yield ctx.call_activity(pack, input=order))]


@app.orchestration
def countdown(ctx: dr.OrchestrationContext, n: int):
    if n > 0:
        ctx.continue_as_new(n - 1)
        return None
    return "done"


def _set_global_provider(provider: TracerProvider | None) -> None:
    # OpenTelemetry sets its global provider once per process; its own test utilities
    # (opentelemetry-test-utils, reset_trace_globals) reset these two the same way.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The global tracer provider, for this test only, exporting into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _set_global_provider(provider)
    yield exporter
    _set_global_provider(None)
    provider.shutdown()


def _tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree (children by name, then attempt): name and the
    attributes a reader looks for."""
    by_id = {s.context.span_id: s for s in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for s in spans:
        parent = s.parent.span_id if s.parent is not None else None
        children.setdefault(parent if parent in by_id else None, []).append(s)

    def key(s: ReadableSpan) -> tuple[str, int]:
        return s.name, int(s.attributes.get("duraray.attempt", 0))  # type: ignore[arg-type]

    lines: list[str] = []

    def walk(s: ReadableSpan, depth: int) -> None:
        notes = [s.kind.name]
        if "duraray.attempt" in s.attributes:
            notes.append(f"attempt={s.attributes['duraray.attempt']}")
        if "duraray.status" in s.attributes:
            notes.append(f"status={s.attributes['duraray.status']}")
        if s.status.status_code is trace.StatusCode.ERROR:
            notes.append(f"ERROR {s.attributes.get('error.type')}")
        lines.append("  " * depth + f"{s.name} [{', '.join(notes)}]")
        for child in sorted(children.get(s.context.span_id, []), key=key):
            walk(child, depth + 1)

    for root in sorted(children.get(None, []), key=key):
        walk(root, 0)
    return "\n".join(lines)


DEMO_TREE = """\
checkout [INTERNAL]
  create_orchestration:demo [PRODUCER]
    orchestration:demo [SERVER, status=COMPLETED]
      activity:flaky [SERVER, attempt=1, ERROR RuntimeError]
      activity:flaky [SERVER, attempt=2]
      activity:reserve [SERVER, attempt=1]
      entity:counter:add [SERVER]
      orchestration:ship [SERVER, status=COMPLETED]
        activity:pack [SERVER, attempt=1]
      orchestration_event:approval [CONSUMER]
      timer [INTERNAL]
      timer [INTERNAL]
  raise_event:approval [PRODUCER]"""


def test_demo_is_one_trace_under_the_callers_span(exporter: InMemorySpanExporter) -> None:
    """A demo orchestration (activities, a timer, a sub-orchestration, an event, an entity
    call, a retried activity) gives one trace under the client's span, parents linked."""
    tracer = trace.get_tracer("test")
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
        with tracer.start_as_current_span("checkout"):
            iid = client.schedule_new_orchestration(demo, input="o-1", instance_id="order-1")
            client.raise_orchestration_event(iid, "approval", data="alice")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
        history = client.get_orchestration_history(iid)

    spans = list(exporter.get_finished_spans())
    print(_tree(spans))  # the README's trace of the demo
    assert DEMO_TREE == _tree(spans)
    assert 1 == len({s.context.trace_id for s in spans})
    assert len(spans) == len({s.context.span_id for s in spans})

    by_name = {s.name: s for s in spans}
    execution = by_name["orchestration:demo"]
    assert {
        "duraray.instance_id": "order-1",
        "duraray.orchestration": "demo",
        "duraray.status": "COMPLETED",
    }.items() <= dict(execution.attributes or {}).items()
    flaky_spans = sorted(
        (s for s in spans if s.name == "activity:flaky"),
        key=lambda s: s.attributes["duraray.attempt"],  # type: ignore[index]
    )
    assert [1, 2] == [s.attributes["duraray.attempt"] for s in flaky_spans]
    assert "card declined" == flaky_spans[0].status.description
    assert ["exception"] == [e.name for e in flaky_spans[0].events]
    entity = by_name["entity:counter:add"]
    assert "@counter@orders" == entity.attributes["duraray.entity"]
    assert "order-1" == entity.attributes["duraray.instance_id"]

    # The execution's stored context names the span that was emitted, and a standard
    # W3C propagator reads it.
    started = next(e for e in history if isinstance(e, h.ExecutionStarted))
    assert started.trace_context is not None
    extracted = trace.get_current_span(
        TraceContextTextMapPropagator().extract(started.trace_context)
    ).get_span_context()
    assert (execution.context.trace_id, execution.context.span_id) == (
        extracted.trace_id,
        extracted.span_id,
    )


def test_without_a_trace_at_the_call_the_orchestration_is_the_root(
    exporter: InMemorySpanExporter,
) -> None:
    """With no span active at the client call, the client records nothing and the
    orchestration's span is the trace's root; its sub-orchestration joins that trace."""
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
        iid = client.schedule_new_orchestration(ship, input="o-2")
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected = "orchestration:ship [SERVER, status=COMPLETED]\n  activity:pack [SERVER, attempt=1]"
    spans = list(exporter.get_finished_spans())
    assert expected == _tree(spans)
    root = next(s for s in spans if s.name == "orchestration:ship")
    assert root.parent is None


def test_restart_mid_instance_emits_no_span_twice(
    exporter: InMemorySpanExporter, data_dir: str
) -> None:
    """A hub on LMDB closed while the instance waits and opened again: the trace goes on
    (the execution's span has the id its children named before the restart) and every
    span is emitted once."""
    clock = ManualClock(auto_advance=True)
    with run_in_process(app, clock=clock, data_dir=data_dir) as client:
        iid = client.schedule_new_orchestration(waits, input="o-3", instance_id="waits-1")
        poll(lambda: {s.name for s in exporter.get_finished_spans()}, lambda n: "timer" in n)
        client.hub_runtime.wait_idle()
    before = {s.context.span_id for s in exporter.get_finished_spans()}
    with run_in_process(app, clock=clock, data_dir=data_dir) as client:
        client.raise_orchestration_event(iid, "approval", data="bob")
        state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert dr.OrchestrationStatus.COMPLETED == state.runtime_status

    spans = list(exporter.get_finished_spans())
    assert sorted(
        [
            "activity:pack",
            "activity:reserve",
            "orchestration:waits",
            "orchestration_event:approval",
            "timer",
        ]
    ) == sorted(s.name for s in spans)
    assert len(spans) == len({s.context.span_id for s in spans})
    execution = next(s for s in spans if s.name == "orchestration:waits")
    assert execution.context.span_id not in before
    assert all(
        s.parent is not None and execution.context.span_id == s.parent.span_id
        for s in spans
        if s is not execution
    )


def test_continue_as_new_chains_executions_in_one_trace(exporter: InMemorySpanExporter) -> None:
    """Each execution of a continued instance has its span, a child of the one before."""
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
        iid = client.schedule_new_orchestration(countdown, input=2)
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    spans = [s for s in exporter.get_finished_spans() if s.name == "orchestration:countdown"]
    statuses = [s.attributes["duraray.status"] for s in sorted(spans, key=lambda s: s.start_time)]  # type: ignore[arg-type,return-value]
    assert ["CONTINUED_AS_NEW", "CONTINUED_AS_NEW", "COMPLETED"] == statuses
    assert 1 == len({s.context.trace_id for s in spans})
    ids = {s.context.span_id for s in spans}
    assert 2 == sum(1 for s in spans if s.parent is not None and s.parent.span_id in ids)


def test_entity_signal_from_a_traced_client(exporter: InMemorySpanExporter) -> None:
    """A signal sent inside a trace: the operation's span is the client span's child."""
    tracer = trace.get_tracer("test")
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
        with tracer.start_as_current_span("signal"):
            client.signal_entity(dr.EntityId("counter", "x"), "add", 5)
        poll(
            lambda: [s.name for s in exporter.get_finished_spans()],
            lambda names: "entity:counter:add" in names,
        )
    expected = """\
signal [INTERNAL]
  signal_entity:counter:add [PRODUCER]
    entity:counter:add [SERVER]"""
    assert expected == _tree(list(exporter.get_finished_spans()))


def test_without_a_provider_nothing_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracer provider set: no trace context is stored and no span is handed on."""
    _set_global_provider(None)
    handed: list[Any] = []
    monkeypatch.setattr(tracing, "emit", lambda spans: handed.extend(spans))
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
        iid = client.schedule_new_orchestration(demo, input="o-4")
        client.raise_orchestration_event(iid, "approval", data="carol")
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        history = client.get_orchestration_history(iid)
    assert [] == handed
    started = next(e for e in history if isinstance(e, h.ExecutionStarted))
    assert started.trace_context is None


class _Failing(SpanProcessor):
    """A span processor that raises at the end of every span of duraray's (a broken
    exporter; the test's own span is spared)."""

    def on_end(self, span: ReadableSpan) -> None:
        scope = span.instrumentation_scope
        if scope is not None and scope.name == tracing.SCOPE:
            raise RuntimeError("exporter down")


def test_a_failing_exporter_fails_no_work() -> None:
    """Spans that cannot be exported are dropped: the instance and the client calls
    behave as without tracing."""
    provider = TracerProvider()
    provider.add_span_processor(_Failing())
    _set_global_provider(provider)
    try:
        tracer = trace.get_tracer("test")
        with run_in_process(app, clock=ManualClock(auto_advance=True)) as client:
            with tracer.start_as_current_span("checkout"):
                iid = client.schedule_new_orchestration(demo, input="o-5")
                client.raise_orchestration_event(iid, "approval", data="dan")
            state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
    finally:
        _set_global_provider(None)


def test_otel_setup_runs_once_before_anything_is_traced(exporter: InMemorySpanExporter) -> None:
    """``otel_setup`` names a function the hub calls once per process (here: this one)."""
    calls.clear()
    tracing._setup_done.discard(SETUP)  # a run of this test earlier in the process
    with run_in_process(app, clock=ManualClock(auto_advance=True), otel_setup=SETUP) as client:
        iid = client.schedule_new_orchestration(ship, input="o-6")
        client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    with run_in_process(app, clock=ManualClock(auto_advance=True), otel_setup=SETUP):
        pass
    assert [os.getpid()] == calls


calls: list[int] = []
SETUP = f"{__name__}:record_setup"


def record_setup() -> None:
    """The ``otel_setup`` of the test above."""
    calls.append(os.getpid())


@pytest.mark.parametrize(
    ("carrier", "error"),
    [
        ({"traceparent": 1}, TypeError),
        ({"traceparent": "00-" + "1" * 4000}, ValueError),
        ("00-abc", TypeError),
    ],
)
def test_a_malformed_carrier_is_refused(carrier: Any, error: type[Exception]) -> None:
    """A request whose trace carrier is not a short map of strings is refused before
    anything is applied or stored."""
    with pytest.raises(error, match="'trace'"):
        check_args({"instance_id": "x", "trace": carrier})


NO_OTEL = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
import duraray as dr
from duraray.runtime import tracing
from duraray.testing import run_in_process

app = dr.App("no-otel")

@app.activity
def hello(ctx, name):
    return f"Hello {name}"

@app.orchestration
def hello1(ctx, name):
    return (yield ctx.call_activity(hello, input=name))

with run_in_process(app) as client:
    iid = client.schedule_new_orchestration(hello1, input="x")
    state = client.wait_for_orchestration_completion(iid, timeout=10)
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry.") and sys.modules[m])
print(state.output, tracing.available(), tracing.enabled(), loaded)
"""


def test_without_the_extra_the_hub_runs_and_imports_nothing_of_it() -> None:
    """With OpenTelemetry not importable, a hub runs as before and nothing of it loads."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_OTEL)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert 0 == done.returncode, done.stderr
    assert "Hello x False False []" == done.stdout.strip().splitlines()[-1]
