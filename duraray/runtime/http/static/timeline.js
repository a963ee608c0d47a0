// An instance's history drawn as a timeline: one bar per activity, timer,
// sub-orchestration, entity call or lock request, from when it was scheduled to when it
// finished, scaled to the instance's time span.
//
// buildTimeline() is a pure function of the history events (as the API returns them:
// {EventType, timestamp, event_id, task_scheduled_id, timer_id, name, ...}); it does the
// pairing and the retry detection. renderTimeline() turns its result into DOM.

import { formatDuration, formatTime, h, ms } from "./ui.js";

// Which event opens a span, and which events close one (they name the opener's event_id
// in task_scheduled_id or, for timers, timer_id).
const OPENERS = {
  TaskScheduled: "activity",
  TimerCreated: "timer",
  SubOrchestrationInstanceCreated: "suborchestration",
  EntityOperationCalled: "entity",
  EntityLockRequested: "lock",
};
const CLOSERS = {
  TaskCompleted: "completed",
  TaskFailed: "failed",
  TimerFired: "fired",
  SubOrchestrationInstanceCompleted: "completed",
  SubOrchestrationInstanceFailed: "failed",
  EntityOperationCompleted: "completed",
  EntityOperationFailed: "failed",
  EntityLockGranted: "granted",
};
// Point events worth a marker on the orchestration's own row.
const MARKERS = {
  EventRaised: (e) => `event “${e.name}” received`,
  EventSent: (e) => `event “${e.name}” sent to ${e.instance_id}`,
  EntityOperationSignaled: (e) => `signalled ${e.entity_id}: ${e.operation}`,
  ExecutionSuspended: (e) => `suspended${e.reason ? `: ${e.reason}` : ""}`,
  ExecutionResumed: (e) => `resumed${e.reason ? `: ${e.reason}` : ""}`,
  ExecutionRewound: (e) => `rewound${e.reason ? `: ${e.reason}` : ""}`,
  ExecutionTerminated: () => "terminated",
  ContinueAsNew: () => "continued as new",
  ExecutionCompleted: (e) => `execution ${String(e.status || "completed").toLowerCase()}`,
};

export const KIND_LABELS = {
  activity: "Activity",
  timer: "Timer",
  retry: "Retry delay",
  suborchestration: "Sub-orchestration",
  entity: "Entity call",
  lock: "Entity lock",
};

function labelOf(kind, e) {
  switch (kind) {
    case "activity":
      return e.name;
    case "timer":
      return "timer";
    case "suborchestration":
      return e.name;
    case "entity":
      // "@stock@sku-42" reads better as "stock@sku-42".
      return `${String(e.entity_id).replace(/^@/, "")} · ${e.operation}`;
    case "lock":
      return `lock ${(e.lock_set || []).join(", ")}`;
    default:
      return kind;
  }
}

function failureMessage(failure) {
  if (!failure) return "";
  if (typeof failure === "string") return failure;
  const type = failure.error_type || failure.errorType || "";
  const message = failure.message || failure.errorMessage || "";
  return type ? `${type}: ${message}` : message;
}

/**
 * Pairs the history into spans and markers.
 *
 * `options.end`: the instance's end (ms) when it is terminal, else the time up to which
 * still-open spans are drawn. Returns {start, end, rows, markers} where each row is a list
 * of spans drawn on one line (a retried task shares a line with its retry delays).
 */
export function buildTimeline(events, { end } = {}) {
  const spans = [];
  const markers = [];
  const open = new Map(); // event_id -> span still waiting for its closer
  let start = NaN;
  let last = NaN;

  events.forEach((e, index) => {
    const t = ms(e.timestamp);
    if (!Number.isNaN(t)) {
      if (Number.isNaN(start) && e.EventType === "ExecutionStarted") start = t;
      last = Number.isNaN(last) ? t : Math.max(last, t);
    }
    const kind = OPENERS[e.EventType];
    if (kind) {
      const span = {
        kind,
        label: labelOf(kind, e),
        start: t,
        end: NaN,
        outcome: "open",
        events: [index],
        fireAt: kind === "timer" ? ms(e.fire_at) : NaN,
        instanceId: kind === "suborchestration" ? e.instance_id : null,
        detail: "",
        attempt: 0,
      };
      spans.push(span);
      open.set(e.event_id, span);
      return;
    }
    const outcome = CLOSERS[e.EventType];
    if (outcome) {
      const id = e.EventType === "TimerFired" ? e.timer_id : e.task_scheduled_id;
      const span = open.get(id);
      if (span) {
        open.delete(id);
        span.end = t;
        span.outcome = outcome;
        span.events.push(index);
        if (outcome === "failed") span.detail = failureMessage(e.failure);
      }
      return;
    }
    const describe = MARKERS[e.EventType];
    if (describe) {
      // A failed execution gets its own marker colour.
      const failed = e.EventType === "ExecutionCompleted" && (e.failure || e.status === "FAILED");
      const type = failed ? "ExecutionFailed" : e.EventType;
      markers.push({ time: t, label: describe(e), type, events: [index] });
    }
  });

  if (Number.isNaN(start)) start = spans.length ? spans[0].start : last;
  const stop = Math.max(Number.isFinite(end) ? end : last, Number.isNaN(last) ? start : last);

  // A failed task followed by a timer and then by the same task again is a retry (the
  // engine writes retry delays as ordinary durable timers): the timer becomes a "retry
  // delay" and all attempts share one row, so the sequence reads left to right.
  const key = (s) => `${s.kind}\u0000${s.label}`;
  const retriable = (s) => s.kind === "activity" || s.kind === "suborchestration";
  const previous = new Map(); // span -> the span it follows on the same row
  spans.forEach((failed, i) => {
    if (!retriable(failed) || failed.outcome !== "failed") return;
    // The retry timer is the first timer created once the failure was recorded.
    const j = spans.findIndex(
      (s, k) => k > i && s.kind === "timer" && !previous.has(s) && s.start >= failed.end,
    );
    if (j < 0) return;
    const timer = spans[j];
    const next = spans.find(
      (s, k) => k > j && key(s) === key(failed) && !previous.has(s) && s.start >= timer.end,
    );
    // A fired timer with no new attempt after it was the code's own timer, not a retry;
    // an unfired one right after a failure is (most likely) the retry still waiting.
    if (!next && timer.outcome !== "open") return;
    failed.attempt = failed.attempt || 1;
    timer.kind = "retry";
    timer.label = next ? "retry delay" : "retry delay (waiting)";
    previous.set(timer, failed);
    if (next) {
      next.attempt = failed.attempt + 1;
      previous.set(next, timer);
    }
  });
  const rows = [];
  const rowOf = new Map();
  for (const span of spans) {
    const row = previous.has(span) ? rowOf.get(previous.get(span)) : [];
    if (!row.length) rows.push(row);
    row.push(span);
    rowOf.set(span, row);
  }
  return { start, end: stop, rows, markers };
}

// -- rendering -----------------------------------------------------------------------------

// Tick steps, in ms, from 1 ms to 30 days; the first giving at most ~7 ticks is used.
const STEPS = [
  1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5,
  9e5, 18e5, 36e5, 72e5, 108e5, 216e5, 432e5, 864e5, 1728e5, 6048e5, 2592e6,
];

function tickStep(range) {
  return STEPS.find((step) => range / step <= 7) || STEPS[STEPS.length - 1];
}

function describeSpan(span, origin) {
  const lines = [
    `${KIND_LABELS[span.kind]}: ${span.label}${span.attempt ? ` (attempt ${span.attempt})` : ""}`,
    `scheduled ${formatTime(new Date(span.start).toISOString())} (+${formatDuration(span.start - origin)})`,
  ];
  if (span.outcome === "open") {
    lines.push(span.kind === "timer" || span.kind === "retry" ? "not fired yet" : "still running");
  } else {
    lines.push(`${span.outcome} after ${formatDuration(span.end - span.start)}`);
  }
  if (Number.isFinite(span.fireAt)) {
    lines.push(`fires at ${formatTime(new Date(span.fireAt).toISOString())}`);
  }
  if (span.detail) lines.push(span.detail);
  return lines.join("\n");
}

/**
 * The timeline as DOM. `onSelect(eventIndexes)` is called when a bar or marker is clicked
 * (the view highlights those rows of the event table); `maxRows` bounds the drawing for
 * very long histories.
 */
export function renderTimeline(model, { status, onSelect = () => {}, maxRows = 200 } = {}) {
  const { start, end, rows, markers } = model;
  if (!Number.isFinite(start)) return h("p", { class: "muted" }, "No history yet.");
  // A zero-length history still gets a visible width, so bars have somewhere to be.
  const range = Math.max(end - start, 1);
  const pct = (t) => `${(((t - start) / range) * 100).toFixed(3)}%`;
  const width = (a, b) => `${Math.max(((b - a) / range) * 100, 0.35).toFixed(3)}%`;

  const step = tickStep(range);
  const ticks = [];
  for (let t = 0; t <= range + 1e-9; t += step) {
    ticks.push(
      h("span", { class: "tl-tick", style: `left:${((t / range) * 100).toFixed(3)}%` }, t === 0 ? "0" : formatDuration(t)),
    );
  }
  const gridlines = ticks.map((tick) => h("span", { class: "tl-grid", style: `left:${tick.style.left}` }));

  const select = (indexes) => () => onSelect(indexes);

  // The orchestration's own row: its whole life, with markers for point events.
  const statusClass = `status-${String(status || "running").toLowerCase()}`;
  const orchestrationRow = h(
    "div",
    { class: "tl-row tl-orchestration" },
    h("div", { class: "tl-label" }, h("span", { class: "tl-name" }, "orchestration"), h("span", { class: "tl-meta" }, formatDuration(end - start))),
    h(
      "div",
      { class: "tl-track" },
      gridlines.map((g) => g.cloneNode()),
      h("div", { class: `tl-bar tl-life ${statusClass}`, style: `left:0;width:100%` }),
      markers.map((m) =>
        h("button", {
          type: "button",
          class: `tl-marker marker-${m.type}`,
          style: `left:${pct(m.time)}`,
          title: `${m.label}\n${formatTime(new Date(m.time).toISOString())} (+${formatDuration(m.time - start)})`,
          "aria-label": m.label,
          onclick: select(m.events),
        }),
      ),
    ),
  );

  const drawn = rows.slice(0, maxRows).map((row) => {
    const first = row[0];
    const attempts = row.filter((s) => s.attempt).length;
    const total = (row[row.length - 1].end || end) - first.start;
    const meta = attempts > 1 ? `${attempts} attempts · ${formatDuration(total)}` : formatDuration((Number.isNaN(first.end) ? end : first.end) - first.start);
    const name = first.instanceId
      ? h("a", { class: "tl-name", href: `#/instances/${encodeURIComponent(first.instanceId)}`, title: first.instanceId }, first.label)
      : h("span", { class: "tl-name", title: first.label }, first.label);
    return h(
      "div",
      { class: `tl-row kind-${first.kind}` },
      h("div", { class: "tl-label" }, h("span", { class: `tl-kind kind-${first.kind}`, title: KIND_LABELS[first.kind] }), name, h("span", { class: "tl-meta" }, meta)),
      h(
        "div",
        { class: "tl-track" },
        gridlines.map((g) => g.cloneNode()),
        row.map((span) => {
          const stop = Number.isNaN(span.end) ? end : span.end;
          return h(
            "button",
            {
              type: "button",
              class: `tl-bar kind-${span.kind} outcome-${span.outcome}`,
              style: `left:${pct(span.start)};width:${width(span.start, stop)}`,
              title: describeSpan(span, start),
              "data-kind": span.kind,
              "data-outcome": span.outcome,
              onclick: select(span.events),
            },
            span.attempt ? h("span", { class: "tl-attempt" }, `#${span.attempt}`) : null,
          );
        }),
      ),
    );
  });

  const more = rows.length > maxRows ? h("p", { class: "muted" }, `${rows.length - maxRows} more rows not drawn; see the event table.`) : null;

  const legend = h(
    "div",
    { class: "tl-legend" },
    ["activity", "timer", "retry", "suborchestration", "entity"].map((kind) =>
      h("span", {}, h("span", { class: `tl-swatch kind-${kind}` }), KIND_LABELS[kind]),
    ),
    h("span", {}, h("span", { class: "tl-swatch outcome-failed" }), "Failed"),
    h("span", {}, h("span", { class: "tl-swatch outcome-open" }), "Not finished"),
    h("span", {}, h("span", { class: "tl-swatch tl-marker-swatch" }), "Event"),
  );

  return h(
    "div",
    { class: "timeline" },
    h("div", { class: "tl-row tl-axis" }, h("div", { class: "tl-label muted" }, formatTime(new Date(start).toISOString())), h("div", { class: "tl-track" }, ticks)),
    orchestrationRow,
    drawn,
    more,
    legend,
  );
}
