// Bulk actions of the instance list: on the selected rows (one request per instance, a
// few at a time, with progress and the failures listed) or on everything the current
// filter matches (one request; the server pages through the matches itself).
//
// Every action asks first, saying how many instances it will touch. Which instances an
// action applies to is decided from the statuses the list last showed; the API still has
// the last word (a 410 for an instance that changed meanwhile is reported as a failure).

import { actOnMatching, instanceAction, purgeInstance } from "../api.js";
import { confirmAction, errorText, fill, formatCount, h, isTerminal, notify, plural, STATUSES } from "../ui.js";

/** Requests in flight at once for a selection: enough to be quick, few enough not to flood the hub. */
const CONCURRENCY = 6;
/** Failures named in the notice after a selection action (the rest are counted). */
const FAILURES_SHOWN = 5;

export const SELECTION_ACTIONS = [
  {
    id: "suspend", label: "Suspend", doing: "Suspending", done: "Suspended",
    applies: (s) => s === "Running" || s === "Pending", skipped: "not running", eligible: "running or pending",
    note: "New events wait until they are resumed.",
  },
  {
    id: "resume", label: "Resume", doing: "Resuming", done: "Resumed",
    applies: (s) => s === "Suspended", skipped: "not suspended", eligible: "suspended",
    note: "They continue with the events that arrived meanwhile.",
  },
  {
    id: "terminate", label: "Terminate", doing: "Terminating", done: "Terminated", danger: true,
    applies: (s) => !isTerminal(s), skipped: "already finished", eligible: "unfinished",
    note: "They and their running sub-orchestrations stop for good.",
  },
  {
    id: "purge", label: "Purge", doing: "Purging", done: "Purged", danger: true,
    applies: (s) => isTerminal(s), skipped: "not finished", eligible: "finished",
    note: "Their state and history are deleted; this cannot be undone.",
  },
];

const MATCHING_ACTIONS = [
  {
    id: "terminate", label: "Terminate", doing: "Terminating", danger: true,
    statuses: STATUSES.filter((s) => !isTerminal(s)), which: "unfinished",
    note: "They and their running sub-orchestrations stop for good.",
  },
  {
    id: "purge", label: "Purge", doing: "Purging", danger: true,
    statuses: STATUSES.filter((s) => isTerminal(s)), which: "finished",
    note: "Their state and history are deleted; this cannot be undone.",
  },
];

/** Runs `work(item)` over `items`, at most `limit` at a time; calls `progress(done)` after each. */
async function pooled(items, limit, work, progress) {
  let next = 0;
  let finished = 0;
  async function worker() {
    while (next < items.length) {
      const item = items[next];
      next += 1;
      await work(item);
      finished += 1;
      progress(finished);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * The bulk action bar. `source` supplies what the actions work on:
 *   selection(): Map of selected instance id -> its last known status;
 *   matching(): {filters (as api.js takes them), description (text), counts (by status,
 *               already limited to the status filter) or null when unknown};
 *   clearSelection(ids): drop ids from the selection;
 *   finished(): called after an action (the list reloads).
 */
export class BulkActions {
  constructor(source) {
    this.source = source;
    this.busy = false;
    this.selectionPart = h("div", { class: "bulk-group", "data-part": "selection" });
    this.matchingPart = h("div", { class: "bulk-group", "data-part": "matching" });
    this.progress = h("span", { class: "bulk-progress muted", role: "status", "aria-live": "polite" });
    this.el = h("div", { class: "bulk-bar", role: "toolbar", "aria-label": "Bulk actions" }, this.selectionPart, this.matchingPart, this.progress);
  }

  /** Redraws the buttons for the current selection and counts. */
  update() {
    const selected = this.source.selection();
    if (!selected.size) {
      fill(this.selectionPart, h("span", { class: "muted" }, "Select instances for bulk actions, or act on all matching:"));
    } else {
      const statuses = [...selected.values()];
      fill(
        this.selectionPart,
        h("strong", { class: "selected-count" }, `${formatCount(selected.size)} selected`),
        SELECTION_ACTIONS.map((action) => {
          const n = statuses.filter(action.applies).length;
          return h("button", {
            type: "button",
            class: action.danger ? "secondary danger" : "secondary",
            disabled: this.busy || n === 0,
            "data-bulk": action.id,
            title: n ? null : `None of the selected instances is ${action.eligible}`,
            onclick: () => this.runOnSelection(action),
          }, `${action.label} ${formatCount(n)}`);
        }),
        h("button", { type: "button", class: "link", disabled: this.busy, onclick: () => this.source.clearSelection([...selected.keys()]) }, "Clear selection"),
      );
    }
    const { counts } = this.source.matching();
    fill(
      this.matchingPart,
      h("span", { class: "muted" }, counts ? `All ${formatCount(sum(counts, STATUSES))} matching:` : "All matching:"),
      MATCHING_ACTIONS.map((action) => {
        const n = counts ? sum(counts, action.statuses) : null;
        return h("button", {
          type: "button",
          class: "secondary danger",
          disabled: this.busy || n === 0,
          "data-matching": action.id,
          title: n === 0 ? `No ${action.which} instance matches` : null,
        }, n === null ? `${action.label} all…` : `${action.label} ${formatCount(n)}…`);
      }),
    );
    for (const button of this.matchingPart.querySelectorAll("button")) {
      const action = MATCHING_ACTIONS.find((a) => a.id === button.dataset.matching);
      button.addEventListener("click", () => this.runOnMatching(action));
    }
  }

  setBusy(busy, text = "") {
    this.busy = busy;
    fill(this.progress, text);
    this.update();
  }

  async runOnSelection(action) {
    const selected = this.source.selection();
    const targets = [...selected].filter(([, status]) => action.applies(status)).map(([id]) => id);
    const left = selected.size - targets.length;
    const message = [
      `${action.label} ${plural(targets.length, "instance")}?`,
      left ? `${formatCount(left)} of the ${formatCount(selected.size)} selected ${left === 1 ? "is" : "are"} ${action.skipped} and left out.` : "",
      action.note,
    ].filter(Boolean).join(" ");
    const ok = await confirmAction(message, {
      title: `${action.label} selected instances`,
      confirmLabel: `${action.label} ${formatCount(targets.length)}`,
      danger: Boolean(action.danger),
    });
    if (!ok) return;
    const failed = [];
    const succeeded = [];
    this.setBusy(true, `${action.doing} 0 of ${formatCount(targets.length)}…`);
    try {
      await pooled(
        targets,
        CONCURRENCY,
        async (id) => {
          try {
            if (action.id === "purge") await purgeInstance(id);
            else await instanceAction(id, action.id);
            succeeded.push(id);
          } catch (error) {
            failed.push([id, error]);
          }
        },
        (n) => fill(this.progress, `${action.doing} ${formatCount(n)} of ${formatCount(targets.length)}…`),
      );
    } finally {
      this.setBusy(false);
    }
    // What succeeded leaves the selection; what failed stays selected for another look.
    this.source.clearSelection(succeeded);
    if (failed.length) {
      const named = failed.slice(0, FAILURES_SHOWN).map(([id, error]) => `${id} (${errorText(error)})`);
      const more = failed.length > FAILURES_SHOWN ? `; and ${formatCount(failed.length - FAILURES_SHOWN)} more` : "";
      notify("error", `${action.done} ${formatCount(succeeded.length)} of ${formatCount(targets.length)}; ${formatCount(failed.length)} failed: ${named.join("; ")}${more}.`);
    } else {
      notify("success", `${action.done} ${plural(succeeded.length, "instance")}.`);
    }
    await this.source.finished();
  }

  async runOnMatching(action) {
    const { filters, description, counts } = this.source.matching();
    const n = counts ? sum(counts, action.statuses) : null;
    const howMany = n === null ? `every ${action.which} instance` : `all ${plural(n, `${action.which} instance`)}`;
    const message = [
      `${action.label} ${howMany} matching ${description}?`,
      n === null ? "The number is not known (the count failed)." : "",
      action.note,
      action.id === "terminate" ? "Instances that start meanwhile and match may be terminated too." : "",
    ].filter(Boolean).join(" ");
    const ok = await confirmAction(message, {
      title: `${action.label} all matching instances`,
      confirmLabel: n === null ? `${action.label} all` : `${action.label} ${formatCount(n)}`,
      danger: true,
    });
    if (!ok) return;
    this.setBusy(true, `${action.doing} all matching instances…`);
    try {
      const done = await actOnMatching(action.id, { ...filters, statuses: restrict(filters.statuses, action.statuses) });
      notify("success", `${action.id === "terminate" ? "Terminated" : "Purged"} ${plural(done, "instance")}.`);
    } catch (error) {
      notify("error", `${action.label} of the matching instances failed: ${errorText(error)}`);
    } finally {
      this.setBusy(false);
    }
    await this.source.finished();
  }
}

function sum(counts, statuses) {
  return statuses.reduce((total, s) => total + (Number(counts[s]) || 0), 0);
}

// The status filter sent with a bulk call: what the operator filtered on, or (no status
// filter) the statuses the action applies to, so the request states its own scope.
function restrict(chosen, applicable) {
  return chosen && chosen.length ? chosen : applicable;
}
