"""The ``otel_setup`` of tests/ray/test_ray_tracing.py, imported by name in Ray processes.

``setup`` gives its process a tracer provider that appends every finished span, as one
JSON line, to ``<SPANS_DIR>/<pid>.jsonl``, and leaves ``<pid>.setup`` beside it, so the
test sees which processes called it and what each emitted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

#: Where processes of the test session write (one directory per user of the machine).
SPANS_DIR = Path(tempfile.gettempdir()) / f"duraray-otel-test-{os.getuid()}"


class JsonLinesExporter(SpanExporter):
    """Appends each span (name, ids, parent, attributes, status) to a file of its process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as fh:
            for span in spans:
                parent = span.parent.span_id if span.parent is not None else None
                record = {
                    "name": span.name,
                    "trace_id": span.context.trace_id,
                    "span_id": span.context.span_id,
                    "parent_id": parent,
                    "attributes": dict(span.attributes or {}),
                    "status": span.status.status_code.name,
                    "pid": os.getpid(),
                }
                fh.write(json.dumps(record) + "\n")
        return SpanExportResult.SUCCESS


def setup() -> None:
    """Install this process's tracer provider (the hub calls it once per process)."""
    SPANS_DIR.mkdir(exist_ok=True)
    pid = os.getpid()
    (SPANS_DIR / f"{pid}.setup").write_text(str(pid))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(SPANS_DIR / f"{pid}.jsonl")))
    trace.set_tracer_provider(provider)
