// One instance: its status, payloads, failure, latest blocking report, history timeline
// and raw event table, and the operator actions (raise event, suspend, resume, terminate,
// rewind, restart, purge).

import { getInstance, instanceAction, purgeInstance, raiseEvent } from "../api.js";
import { buildTimeline } from "../timeline.js";
import { renderTimeline } from "../timeline-view.js";
import {
  badge,
  confirmAction,
  errorText,
  fill,
  formatDuration,
  formatTime,
  h,
  isTerminal,
  ms,
  notify,
  payloadBlock,
  preview,
  statusName,
} from "../ui.js";

// Which actions make sense in which status; the API still has the last word (410).
const ACTIONS = [
  { id: "suspend", label: "Suspend", when: (s) => s === "Running" || s === "Pending" },
  { id: "resume", label: "Resume", when: (s) => s === "Suspended" },
  { id: "terminate", label: "Terminate", when: (s) => !isTerminal(s), danger: true },
  { id: "rewind", label: "Rewind", when: (s) => s === "Failed" },
  { id: "restart", label: "Restart", when: (s) => isTerminal(s) },
  { id: "purge", label: "Purge", when: (s) => isTerminal(s), danger: true },
];

const CONFIRM_TEXT = {
  suspend: "New events will wait until the instance is resumed.",
  resume: "The instance continues with the events that arrived meanwhile.",
  terminate: "The instance and its running sub-orchestrations stop for good.",
  rewind: "The failed activities and sub-orchestrations are run again.",
  restart: "A new execution starts with the original input.",
  purge: "Its state and history are deleted; this cannot be undone.",
};

// History fields shown in the table's "details" column (payloads go in their own column).
const DETAIL_FIELDS = [
  "name", "event_id", "task_scheduled_id", "timer_id", "fire_at", "instance_id",
  "entity_id", "operation", "status", "reason", "version", "critical_section_id",
];
const PAYLOAD_FIELDS = ["input", "result", "output", "failure"];

/** The failure of a failed instance, from wherever the API put it. */
function failureOf(instance) {
  const completed = (instance.historyEvents || []).filter((e) => e.EventType === "ExecutionCompleted" && e.failure).pop();
  const raw = instance.failureDetails || instance.failure_details || (completed && completed.failure);
  if (raw && typeof raw === "object") {
    return {
      type: raw.error_type || raw.errorType || raw.ErrorType || "",
      message: raw.message || raw.errorMessage || raw.ErrorMessage || "",
      stack: raw.stack_trace || raw.stackTrace || raw.StackTrace || "",
      inner: raw.innerFailure || raw.inner || null,
    };
  }
  // Durable Functions puts a failed instance's message into output.
  if (statusName(instance.runtimeStatus) === "Failed" && instance.output != null) {
    return { type: "", message: typeof instance.output === "string" ? instance.output : JSON.stringify(instance.output), stack: "", inner: null };
  }
  return null;
}

function failurePanel(failure) {
  const chain = [];
  for (let inner = failure.inner; inner && chain.length < 10; inner = inner.innerFailure || inner.inner) {
    const type = inner.errorType || inner.error_type || "Error";
    chain.push(h("li", {}, `${type}: ${inner.errorMessage || inner.message || ""}`));
  }
  return h(
    "section",
    { class: "panel panel-failure" },
    h("h2", {}, "Failure"),
    h("p", { class: "failure-message" }, failure.type ? h("strong", {}, `${failure.type}: `) : null, failure.message),
    chain.length ? h("div", {}, h("p", { class: "muted" }, "Caused by"), h("ul", {}, chain)) : null,
    failure.stack ? h("details", {}, h("summary", {}, "Stack trace"), h("pre", { class: "payload" }, failure.stack)) : null,
  );
}

/** The latest episode of the instance that blocked its partition (``blockingReport``). */
function blockingPanel(report) {
  const ran = report.finishedAfter == null
    ? `has run for over ${formatDuration(report.seconds * 1000)} and still runs`
    : `ran for ${formatDuration(report.finishedAfter * 1000)}`;
  return h(
    "section",
    { class: "panel panel-warning", "data-panel": "blocking" },
    h("h2", {}, "Blocking episode"),
    h("p", {},
      `An episode of this orchestration ${ran} on partition ${report.partition}; the partition's other instances waited meanwhile. `,
      `Reported ${formatTime(report.reportedAt)}, after ${formatDuration(report.seconds * 1000)}. `,
      "Orchestrator code must not block: wait with a durable timer or an event, do I/O in an activity."),
    h("details", { open: true }, h("summary", {}, "Stack when reported"), h("pre", { class: "payload" }, report.stack || "(not available)")),
  );
}

function historyTable(events) {
  if (!events.length) return h("p", { class: "muted" }, "No history events.");
  return h(
    "table",
    { class: "data history" },
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Time"), h("th", {}, "Event"), h("th", {}, "Details"), h("th", {}, "Payload"))),
    h("tbody", {}, events.map((e, index) => {
      const details = DETAIL_FIELDS.filter((f) => e[f] !== undefined && e[f] !== null).map((f) =>
        h("span", { class: "kv" }, h("span", { class: "k" }, f), " ", String(f === "fire_at" ? formatTime(e[f]) : e[f])));
      const payloads = PAYLOAD_FIELDS.filter((f) => e[f] !== undefined && e[f] !== null);
      return h(
        "tr",
        { "data-index": index, class: e.EventType.endsWith("Failed") || (e.EventType === "ExecutionCompleted" && e.failure) ? "row-failed" : null },
        h("td", { class: "muted" }, index),
        h("td", { class: "nowrap mono", title: e.timestamp }, formatTime(e.timestamp), h("span", { class: "millis" }, millis(e.timestamp))),
        h("td", {}, h("span", { class: "event-type" }, e.EventType)),
        h("td", {}, details),
        h("td", {}, payloads.map((f) =>
          h("details", { class: "payload-cell" }, h("summary", {}, h("span", { class: "k" }, f), " ", preview(e[f], 60)), payloadBlock(e[f])))),
      );
    })),
  );
}

/** ".123" for a timestamp's milliseconds (events of one episode share the second). */
function millis(iso) {
  const t = ms(iso);
  return Number.isNaN(t) ? "" : `.${String(t % 1000).padStart(3, "0")}`;
}

export function instanceView(instanceId) {
  const title = h("h1", { class: "mono" }, instanceId);
  const statusSlot = h("span", { class: "status-slot" });
  const subtitle = h("p", { class: "subtitle muted" });
  const actionBar = h("div", { class: "actions", role: "toolbar", "aria-label": "Instance actions" });
  const message = h("div", { class: "view-status", role: "status" });

  // The raise-event form sits outside the refreshed sections, so typing is never lost.
  const eventName = h("input", { name: "eventName", required: true, placeholder: "approval", autocomplete: "off" });
  const eventData = h("textarea", { name: "eventData", rows: 3, placeholder: '{"approved": true}', spellcheck: "false" });
  const eventError = h("p", { class: "error-text", role: "alert" });
  const raiseForm = h(
    "form",
    { class: "panel raise-form", hidden: true, "aria-label": "Raise event" },
    h("h2", {}, "Raise event"),
    h("div", { class: "raise-fields" },
      h("label", { class: "field" }, "Event name", eventName),
      h("label", { class: "field field-grow" }, "Data (JSON, optional)", eventData)),
    eventError,
    h("div", { class: "dialog-buttons" },
      h("button", { type: "button", class: "secondary", onclick: () => (raiseForm.hidden = true) }, "Cancel"),
      h("button", { type: "submit", class: "primary" }, "Send event")),
  );
  raiseForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(eventError);
    const name = eventName.value.trim();
    const text = eventData.value.trim();
    if (text) {
      try {
        JSON.parse(text);
      } catch (error) {
        fill(eventError, `The data is not valid JSON: ${error.message}`);
        return;
      }
    }
    const ok = await confirmAction(`Raise event “${name}” on ${instanceId}?`, { title: "Raise event", confirmLabel: "Raise event" });
    if (!ok) return;
    try {
      await raiseEvent(instanceId, name, text || undefined);
      notify("success", `Event “${name}” sent to ${instanceId}.`);
      raiseForm.hidden = true;
      eventData.value = "";
      await view.refresh({ force: true });
    } catch (error) {
      fill(eventError, `Could not raise the event: ${errorText(error)}`);
    }
  });

  const payloads = h("div", { class: "panels" });
  const failureSlot = h("div");
  const blockingSlot = h("div");
  const timelineSlot = h("div", { class: "timeline-slot" });
  const historySlot = h("div", { class: "table-wrap history-wrap" });
  const historyCount = h("span", { class: "muted" });
  // Everything shown about the instance (hidden while there is no instance to show).
  const content = h(
    "div",
    { hidden: true },
    failureSlot,
    blockingSlot,
    payloads,
    h("section", { class: "panel" }, h("h2", {}, "Timeline"), timelineSlot),
    h("section", { class: "panel" }, h("h2", {}, "History ", historyCount), historySlot),
  );

  const el = h(
    "section",
    { class: "view view-instance" },
    h("p", { class: "crumbs" }, h("a", { href: "#/instances" }, "← Instances")),
    h("div", { class: "view-head" }, h("div", { class: "title-line" }, title, statusSlot), actionBar),
    subtitle,
    message,
    raiseForm,
    content,
  );

  let current = null; // the last instance payload shown
  let lastJson = "";
  const expandedGroups = new Set(); // timeline groups the operator opened (kept on redraw)

  async function runAction(action) {
    const ok = await confirmAction(`${action.label} ${instanceId}? ${CONFIRM_TEXT[action.id]}`, {
      title: `${action.label} instance`,
      confirmLabel: action.label,
      danger: Boolean(action.danger),
    });
    if (!ok) return;
    try {
      if (action.id === "purge") {
        await purgeInstance(instanceId);
        notify("success", `${instanceId} was purged.`);
        location.hash = "#/instances";
        return;
      }
      const { data } = await instanceAction(instanceId, action.id);
      notify("success", `${action.label}: request accepted for ${instanceId}.`);
      // Restart may start a new instance id; follow it.
      const newId = data && typeof data === "object" ? data.id || data.instanceId : typeof data === "string" ? data : null;
      if (action.id === "restart" && newId && newId !== instanceId) {
        location.hash = `#/instances/${encodeURIComponent(newId)}`;
        return;
      }
      await view.refresh({ force: true });
    } catch (error) {
      notify("error", `${action.label} failed: ${errorText(error)}`);
      // A refusal usually means the page is behind the instance (410): catch up.
      await view.refresh({ force: true });
    }
  }

  function renderActions(status) {
    const raise = h("button", { type: "button", class: "primary", disabled: isTerminal(status), "data-action": "raise" }, "Raise event…");
    raise.addEventListener("click", () => {
      raiseForm.hidden = !raiseForm.hidden;
      if (!raiseForm.hidden) eventName.focus();
    });
    fill(
      actionBar,
      raise,
      ACTIONS.map((action) => {
        const enabled = action.when(status);
        const button = h("button", {
          type: "button",
          class: action.danger ? "secondary danger" : "secondary",
          disabled: !enabled,
          title: enabled ? null : `Not possible while ${status}`,
          "data-action": action.id,
        }, action.label);
        button.addEventListener("click", () => runAction(action));
        return button;
      }),
    );
  }

  function highlight(indexes) {
    const rows = historySlot.querySelectorAll("tbody tr");
    rows.forEach((row) => row.classList.remove("highlight"));
    const chosen = indexes.map((i) => rows[i]).filter(Boolean);
    chosen.forEach((row) => row.classList.add("highlight"));
    if (chosen.length) chosen[0].scrollIntoView({ block: "center", behavior: "smooth" });
  }

  function render(instance) {
    const status = statusName(instance.runtimeStatus);
    const events = instance.historyEvents || [];
    fill(statusSlot, badge(status));
    const created = ms(instance.createdTime);
    const updated = ms(instance.lastUpdatedTime);
    fill(
      subtitle,
      h("span", {}, h("strong", {}, instance.name)),
      ` · created ${formatTime(instance.createdTime)}`,
      ` · updated ${formatTime(instance.lastUpdatedTime)}`,
      isTerminal(status) ? ` · took ${formatDuration(updated - created)}` : "",
      instance.parentInstanceId
        ? [" · parent ", h("a", { class: "mono", href: `#/instances/${encodeURIComponent(instance.parentInstanceId)}` }, instance.parentInstanceId)]
        : "",
    );
    renderActions(status);
    if (isTerminal(status)) raiseForm.hidden = true;
    content.hidden = false;

    const failure = status === "Failed" ? failureOf(instance) : null;
    fill(failureSlot, failure ? failurePanel(failure) : null);
    fill(blockingSlot, instance.blockingReport ? blockingPanel(instance.blockingReport) : null);
    fill(
      payloads,
      h("section", { class: "panel", "data-panel": "input" }, h("h2", {}, "Input"), payloadBlock(instance.input)),
      h("section", { class: "panel", "data-panel": "output" }, h("h2", {}, "Output"),
        payloadBlock(status === "Failed" && failure ? null : instance.output, { empty: isTerminal(status) ? "none" : "not finished" })),
      h("section", { class: "panel", "data-panel": "custom-status" }, h("h2", {}, "Custom status"), payloadBlock(instance.customStatus)),
    );

    drawTimeline(instance);
    fill(historyCount, `(${events.length} events)`);
    fill(historySlot, historyTable(events));
  }

  function drawTimeline(instance) {
    const status = statusName(instance.runtimeStatus);
    const events = instance.historyEvents || [];
    // A running instance's open bars reach "now", taken from the browser's clock when it
    // agrees with the server's (within a day) and from the last update otherwise.
    const times = events.map((e) => ms(e.timestamp)).filter(Number.isFinite);
    const lastEvent = Math.max(ms(instance.lastUpdatedTime) || 0, ...times);
    const now = Date.now();
    const end = isTerminal(status) || now < lastEvent || now - lastEvent > 864e5 ? lastEvent : now;
    const model = buildTimeline(events, { end });
    fill(timelineSlot, renderTimeline(model, { status, onSelect: highlight, expanded: expandedGroups }));
  }

  const view = {
    el,
    title: instanceId,
    async refresh({ force = false } = {}) {
      // A finished instance changes only through an action, which refreshes with force.
      if (!force && current && isTerminal(current.runtimeStatus)) return;
      try {
        const instance = await getInstance(instanceId);
        fill(message);
        const json = JSON.stringify(instance);
        const running = !isTerminal(instance.runtimeStatus);
        // Re-render only on change, so open <details> stay open; a running instance's
        // timeline still moves with the clock.
        if (json !== lastJson) {
          lastJson = json;
          current = instance;
          render(instance);
        } else if (running) {
          drawTimeline(instance);
        }
      } catch (error) {
        if (error.status === 404) {
          fill(message, h("p", { class: "empty" }, `No instance ${instanceId} (it may have been purged).`));
          fill(actionBar);
          fill(statusSlot);
          fill(subtitle);
          content.hidden = true;
          raiseForm.hidden = true;
          current = null;
          lastJson = "";
        } else {
          fill(message, h("p", { class: "error-text" }, `Could not load the instance: ${errorText(error)}`));
        }
      }
    },
  };
  return view;
}
