// An instance's history as a timeline model: one span per activity, timer,
// sub-orchestration, entity call or lock request, from when it was scheduled to when it
// finished; the rows they are drawn on; and the groups that fold a fan-out's rows of one
// name into one.
//
// Pure functions of the history events (as the API returns them: {EventType, timestamp,
// event_id, task_scheduled_id, timer_id, name, ...}): buildTimeline() does the pairing and
// the retry detection, groupRows() the folding. timeline-view.js turns them into DOM.

import { ms } from "./ui.js";

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


// -- groups ------------------------------------------------------------------------------------

// The kinds whose rows of one name fold into a group: a fan-out schedules many activities
// (or sub-orchestrations) of the same name, and one row each would make a 200-way fan-out
// a 6,000-pixel page. Timers, entity calls and locks are named by their target, rarely fan
// out, and keep a row each.
const GROUPED_KINDS = new Set(["activity", "suborchestration"]);

/** The last span of a row of the group's kind (its last attempt; retry delays skipped). */
function lastCall(row, kind) {
  for (let i = row.length - 1; i >= 0; i -= 1) {
    if (row[i].kind === kind) return row[i];
  }
  return row[row.length - 1];
}

/**
 * Folds the rows of one activity (or sub-orchestration) name into a group, placed where
 * the name first appears; a name with fewer than `minimum` rows keeps its own row.
 *
 * Returns a list of items, each {row} or {group}, where a group is {key, kind, label,
 * rows, calls (attempts), failed (rows whose last attempt failed), failedAttempts,
 * retried (rows with more than one attempt), open (rows not finished), start (first
 * scheduled), end (last finished; NaN while any is open), events (all event indexes)}.
 */
export function groupRows(rows, { minimum = 2 } = {}) {
  const items = [];
  const byKey = new Map();
  for (const row of rows) {
    const first = row[0];
    if (!GROUPED_KINDS.has(first.kind)) {
      items.push({ row });
      continue;
    }
    const key = `${first.kind}:${first.label}`;
    let group = byKey.get(key);
    if (!group) {
      group = { key, kind: first.kind, label: first.label, rows: [] };
      byKey.set(key, group);
      items.push({ group });
    }
    group.rows.push(row);
  }
  return items.map((item) => {
    if (!item.group) return item;
    if (item.group.rows.length < minimum) return { row: item.group.rows[0] };
    return { group: summarize(item.group) };
  });
}

function summarize(group) {
  let calls = 0;
  let failedAttempts = 0;
  let failed = 0;
  let retried = 0;
  let open = 0;
  let start = Infinity;
  let end = -Infinity;
  const events = [];
  for (const row of group.rows) {
    let attempts = 0;
    for (const span of row) {
      events.push(...span.events);
      if (span.kind !== group.kind) continue; // a retry delay between two attempts
      attempts += 1;
      if (span.outcome === "failed") failedAttempts += 1;
    }
    calls += attempts;
    if (attempts > 1) retried += 1;
    const last = lastCall(row, group.kind);
    if (last.outcome === "failed") failed += 1;
    if (last.outcome === "open") open += 1;
    start = Math.min(start, row[0].start);
    if (Number.isFinite(last.end)) end = Math.max(end, last.end);
  }
  return {
    ...group,
    calls,
    failed,
    failedAttempts,
    retried,
    open,
    start,
    end: open || !Number.isFinite(end) ? NaN : end,
    events,
  };
}
