// The timeline as DOM (the model comes from timeline.js): a time axis, the orchestration's
// own row with its point events, one row per span (a retried task shares its row with its
// retry delays), and one row per fan-out group, which shows how many calls were in flight
// over time and expands to its individual rows.

import { groupRows, KIND_LABELS } from "./timeline.js";
import { formatCount, formatDuration, formatTime, h } from "./ui.js";

/** Rows an expanded group draws at most; the event table below lists every event. */
export const EXPANDED_ROWS_CAP = 500;
/** Columns of a group's in-flight histogram. */
const BUCKETS = 48;

// Tick steps, in ms, from 1 ms to 30 days; the first giving at most ~7 ticks is used.
const STEPS = [
  1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5,
  9e5, 18e5, 36e5, 72e5, 108e5, 216e5, 432e5, 864e5, 1728e5, 6048e5, 2592e6,
];

function tickStep(range) {
  return STEPS.find((step) => range / step <= 7) || STEPS[STEPS.length - 1];
}

const at = (t) => formatTime(new Date(t).toISOString());

function describeSpan(span, origin) {
  const lines = [
    `${KIND_LABELS[span.kind]}: ${span.label}${span.attempt ? ` (attempt ${span.attempt})` : ""}`,
    `scheduled ${at(span.start)} (+${formatDuration(span.start - origin)})`,
  ];
  if (span.outcome === "open") {
    lines.push(span.kind === "timer" || span.kind === "retry" ? "not fired yet" : "still running");
  } else {
    lines.push(`${span.outcome} after ${formatDuration(span.end - span.start)}`);
  }
  if (Number.isFinite(span.fireAt)) lines.push(`fires at ${at(span.fireAt)}`);
  if (span.detail) lines.push(span.detail);
  return lines.join("\n");
}

function describeGroup(group, origin, peak) {
  const lines = [
    `${KIND_LABELS[group.kind]}: ${group.label}, ${plural(group.rows.length, "call")}`,
    `first scheduled ${at(group.start)} (+${formatDuration(group.start - origin)})`,
    Number.isNaN(group.end) ? `${formatCount(group.open)} still running` : `last finished ${at(group.end)} (+${formatDuration(group.end - origin)})`,
    `at most ${formatCount(peak)} in flight at once`,
  ];
  if (group.failed) lines.push(`${formatCount(group.failed)} failed`);
  if (group.retried) lines.push(`${formatCount(group.retried)} retried (${formatCount(group.failedAttempts)} failed attempts)`);
  lines.push("Click to show the individual calls.");
  return lines.join("\n");
}

const plural = (n, word) => `${formatCount(n)} ${word}${n === 1 ? "" : "s"}`;

/**
 * One row: its spans on one line (a task and its retries), labelled by the first, or by
 * `caption` (a group's rows all share the name: they show their number or child id).
 */
function rowElement(row, t, { extraClass = "", caption = null } = {}) {
  const first = row[0];
  const text = caption || first.label;
  const attempts = row.filter((s) => s.attempt).length;
  const total = (row[row.length - 1].end || t.end) - first.start;
  const meta = attempts > 1 ? `${attempts} attempts · ${formatDuration(total)}` : formatDuration((Number.isNaN(first.end) ? t.end : first.end) - first.start);
  const name = first.instanceId
    ? h("a", { class: "tl-name", href: `#/instances/${encodeURIComponent(first.instanceId)}`, title: first.instanceId }, text)
    : h("span", { class: "tl-name", title: first.label }, text);
  return h(
    "div",
    { class: `tl-row kind-${first.kind} ${extraClass}`.trim() },
    h("div", { class: "tl-label" }, h("span", { class: `tl-kind kind-${first.kind}`, title: KIND_LABELS[first.kind] }), name, h("span", { class: "tl-meta" }, meta)),
    h(
      "div",
      { class: "tl-track" },
      t.gridlines(),
      row.map((span) => {
        const stop = Number.isNaN(span.end) ? t.end : span.end;
        return h(
          "button",
          {
            type: "button",
            class: `tl-bar kind-${span.kind} outcome-${span.outcome}`,
            style: `left:${t.pct(span.start)};width:${t.width(span.start, stop)}`,
            title: describeSpan(span, t.start),
            "data-kind": span.kind,
            "data-outcome": span.outcome,
            onclick: () => t.onSelect(span.events),
          },
          span.attempt ? h("span", { class: "tl-attempt" }, `#${span.attempt}`) : null,
        );
      }),
    ),
  );
}

/** How many of the group's calls were in flight in each of BUCKETS slices of [from, to]. */
function inFlight(group, from, to, end) {
  const size = Math.max(to - from, 1) / BUCKETS;
  const slot = (x) => Math.min(BUCKETS - 1, Math.max(0, Math.floor((x - from) / size)));
  const diff = new Array(BUCKETS + 1).fill(0);
  const failures = new Set();
  for (const row of group.rows) {
    for (const span of row) {
      if (span.kind !== group.kind) continue;
      const stop = Number.isNaN(span.end) ? end : span.end;
      diff[slot(span.start)] += 1;
      diff[slot(stop) + 1] -= 1;
      if (span.outcome === "failed") failures.add(slot(stop));
    }
  }
  const counts = [];
  let running = 0;
  for (let i = 0; i < BUCKETS; i += 1) {
    running += diff[i];
    counts.push(running);
  }
  return { counts, failures, size };
}

/** A fan-out group: one row (envelope, in-flight histogram, failures), expandable. */
function groupElement(group, t, expanded) {
  const wrap = h("div", { class: "tl-group-wrap", "data-group": group.key });
  const stop = Number.isNaN(group.end) ? t.end : group.end;
  const { counts, failures, size } = inFlight(group, group.start, stop, t.end);
  const peak = Math.max(1, ...counts);

  function draw() {
    const open = expanded.has(group.key);
    const toggle = () => {
      if (open) expanded.delete(group.key);
      else expanded.add(group.key);
      draw();
      wrap.querySelector(".tl-toggle").focus();
    };
    const histogram = counts.map((n, i) =>
      n ? h("span", { class: `tl-hist kind-${group.kind}`, style: `left:${t.pct(group.start + i * size)};width:${t.width(0, size)};height:${Math.max(2, Math.round((n / peak) * 12))}px` }) : null,
    );
    const ticks = [...failures].map((i) => h("span", { class: "tl-fail", style: `left:${t.pct(group.start + (i + 0.5) * size)}` }));
    const row = h(
      "div",
      { class: `tl-row tl-group kind-${group.kind}`, "data-count": group.rows.length, "data-failed": group.failed },
      h(
        "div",
        { class: "tl-label" },
        h("span", { class: `tl-kind kind-${group.kind}`, title: KIND_LABELS[group.kind] }),
        h("button", { type: "button", class: "tl-toggle", "aria-expanded": String(open), title: open ? "Hide the individual calls" : "Show the individual calls", onclick: toggle },
          h("span", { class: "tl-caret", "aria-hidden": "true" }, open ? "▾" : "▸"),
          h("span", { class: "tl-name" }, group.label)),
        h("span", { class: "tl-count" }, `×${formatCount(group.rows.length)}`),
        group.failed ? h("span", { class: "tl-failed" }, `${formatCount(group.failed)} failed`) : null,
        h("span", { class: "tl-meta" }, formatDuration(stop - group.start)),
      ),
      h(
        "div",
        { class: "tl-track" },
        t.gridlines(),
        h("button", {
          type: "button",
          class: `tl-bar tl-envelope kind-${group.kind}${group.open ? " outcome-open" : ""}`,
          style: `left:${t.pct(group.start)};width:${t.width(group.start, stop)}`,
          title: describeGroup(group, t.start, peak),
          "aria-label": `${group.label}: ${plural(group.rows.length, "call")}`,
          onclick: toggle,
        }),
        histogram,
        ticks,
      ),
    );
    let children = null;
    if (open) {
      const shown = group.rows.slice(0, EXPANDED_ROWS_CAP);
      const hidden = group.rows.length - shown.length;
      children = h(
        "div",
        { class: "tl-children" },
        shown.map((r, i) => rowElement(r, t, { extraClass: "tl-sub", caption: r[0].instanceId || `${group.label} #${i + 1}` })),
        hidden ? h("p", { class: "muted tl-note" }, `Showing the first ${formatCount(shown.length)} of ${plural(group.rows.length, "call")}; the event table lists them all.`) : null,
      );
    }
    wrap.replaceChildren(row, ...(children ? [children] : []));
  }
  draw();
  return wrap;
}

/**
 * The timeline as DOM. `onSelect(eventIndexes)` is called when a bar or marker is clicked
 * (the view highlights those rows of the event table); `maxRows` bounds the rows drawn for
 * very long histories; `expanded` is the set of group keys shown expanded (the caller
 * keeps it, so a redraw keeps what the operator opened).
 */
export function renderTimeline(model, { status, onSelect = () => {}, maxRows = 200, expanded = new Set() } = {}) {
  const { start, end, rows, markers } = model;
  if (!Number.isFinite(start)) return h("p", { class: "muted" }, "No history yet.");
  // A zero-length history still gets a visible width, so bars have somewhere to be.
  const range = Math.max(end - start, 1);
  const step = tickStep(range);
  const tickAt = [];
  for (let x = 0; x <= range + 1e-9; x += step) tickAt.push(x);
  const left = (x) => `${((x / range) * 100).toFixed(3)}%`;
  const t = {
    start,
    end,
    onSelect,
    pct: (x) => left(x - start),
    width: (a, b) => `${Math.max(((b - a) / range) * 100, 0.35).toFixed(3)}%`,
    gridlines: () => tickAt.map((x) => h("span", { class: "tl-grid", style: `left:${left(x)}` })),
  };
  const ticks = tickAt.map((x) => h("span", { class: "tl-tick", style: `left:${left(x)}` }, x === 0 ? "0" : formatDuration(x)));

  // The orchestration's own row: its whole life, with markers for point events.
  const statusClass = `status-${String(status || "running").toLowerCase()}`;
  const orchestrationRow = h(
    "div",
    { class: "tl-row tl-orchestration" },
    h("div", { class: "tl-label" }, h("span", { class: "tl-name" }, "orchestration"), h("span", { class: "tl-meta" }, formatDuration(end - start))),
    h(
      "div",
      { class: "tl-track" },
      t.gridlines(),
      h("div", { class: `tl-bar tl-life ${statusClass}`, style: "left:0;width:100%" }),
      markers.map((m) =>
        h("button", {
          type: "button",
          class: `tl-marker marker-${m.type}`,
          style: `left:${t.pct(m.time)}`,
          title: `${m.label}\n${at(m.time)} (+${formatDuration(m.time - start)})`,
          "aria-label": m.label,
          onclick: () => onSelect(m.events),
        }),
      ),
    ),
  );

  const items = groupRows(rows);
  const drawn = items.slice(0, maxRows).map((item) => (item.group ? groupElement(item.group, t, expanded) : rowElement(item.row, t)));
  const more = items.length > maxRows ? h("p", { class: "muted" }, `${formatCount(items.length - maxRows)} more rows not drawn; see the event table.`) : null;

  const legend = h(
    "div",
    { class: "tl-legend" },
    ["activity", "timer", "retry", "suborchestration", "entity"].map((kind) =>
      h("span", {}, h("span", { class: `tl-swatch kind-${kind}` }), KIND_LABELS[kind]),
    ),
    h("span", {}, h("span", { class: "tl-swatch outcome-failed" }), "Failed"),
    h("span", {}, h("span", { class: "tl-swatch outcome-open" }), "Not finished"),
    h("span", {}, h("span", { class: "tl-swatch tl-marker-swatch" }), "Event"),
    h("span", {}, h("span", { class: "tl-swatch tl-group-swatch" }), "Calls of one name (×n): in flight over time, click to expand"),
  );

  return h(
    "div",
    { class: "timeline" },
    h("div", { class: "tl-row tl-axis" }, h("div", { class: "tl-label muted" }, at(start)), h("div", { class: "tl-track" }, ticks)),
    orchestrationRow,
    drawn,
    more,
    legend,
  );
}
