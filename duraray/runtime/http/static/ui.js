// Small DOM and formatting helpers shared by the views.
//
// Everything the server sends is put into the page as text (never as HTML), so instance
// ids, names and payloads cannot inject markup.

/**
 * Creates an element: h("a", {href: "#", class: "x"}, "text", child, ...).
 * Attributes starting with "on" become event listeners; null/false attributes are left out.
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  appendAll(node, children);
  return node;
}

function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces a node's content. */
export function fill(node, ...children) {
  node.replaceChildren();
  appendAll(node, children);
  return node;
}

// -- statuses ------------------------------------------------------------------------------

const STATUS_NAMES = {
  PENDING: "Pending",
  RUNNING: "Running",
  COMPLETED: "Completed",
  CONTINUED_AS_NEW: "ContinuedAsNew",
  FAILED: "Failed",
  TERMINATED: "Terminated",
  SUSPENDED: "Suspended",
};

/** The runtime statuses, in Durable Functions casing (what the API speaks). */
export const STATUSES = Object.values(STATUS_NAMES);

/** "RUNNING" or "Running" -> "Running" (partition stats use the engine's names). */
export function statusName(status) {
  if (!status) return "Unknown";
  return STATUS_NAMES[String(status).toUpperCase()] || String(status);
}

const TERMINAL = new Set(["Completed", "Failed", "Terminated"]);

export function isTerminal(status) {
  return TERMINAL.has(statusName(status));
}

export function badge(status) {
  const name = statusName(status);
  return h("span", { class: `badge status-${name.toLowerCase()}`, "data-status": name }, name);
}

// -- time ----------------------------------------------------------------------------------

/** Milliseconds since the epoch, or NaN for a missing or unreadable timestamp. */
export function ms(iso) {
  return iso ? Date.parse(iso) : NaN;
}

/** A timestamp in the viewer's local time, to the second ("2026-01-01 09:30:05"). */
export function formatTime(iso) {
  const t = ms(iso);
  if (Number.isNaN(t)) return "—";
  const d = new Date(t);
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

/** A duration for people: "850 ms", "2.4 s", "3 min 5 s", "2 h 10 min", "3 d 4 h". */
export function formatDuration(millis) {
  if (!Number.isFinite(millis)) return "—";
  if (millis < 1000) return `${Math.round(millis)} ms`;
  const s = millis / 1000;
  if (s < 60) return `${s < 10 ? Number(s.toFixed(1)) : Math.round(s)} s`;
  // Larger units leave out a zero remainder: "2 min", not "2 min 0 s".
  const both = (a, unitA, b, unitB) => (b ? `${a} ${unitA} ${b} ${unitB}` : `${a} ${unitA}`);
  const whole = Math.round(s);
  const m = Math.floor(whole / 60);
  if (m < 60) return both(m, "min", whole % 60, "s");
  const hours = Math.floor(m / 60);
  if (hours < 48) return both(hours, "h", m % 60, "min");
  return both(Math.floor(hours / 24), "d", hours % 24, "h");
}

/** A count for people: 10000 -> "10,000". */
export function formatCount(n) {
  return Number(n || 0).toLocaleString("en-US");
}

/** "1 instance", "3 instances". */
export function plural(n, one, many = `${one}s`) {
  return `${formatCount(n)} ${n === 1 ? one : many}`;
}

/** A datetime-local input's value (local time) as ISO 8601 UTC, or "" when empty. */
export function localInputToIso(value) {
  if (!value) return "";
  const t = new Date(value);
  return Number.isNaN(t.getTime()) ? "" : t.toISOString();
}

// -- payloads ------------------------------------------------------------------------------

/** JSON text for a payload; strings that hold JSON (DF style) are shown parsed. */
export function prettyJson(value) {
  if (value === undefined) return "";
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return JSON.stringify(value);
    }
  }
  return JSON.stringify(value, null, 2);
}

/** A one-line preview of a payload, cut to `limit` characters. */
export function preview(value, limit = 80) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

/** A <pre> block with a payload, or a muted "none". */
export function payloadBlock(value, { empty = "none" } = {}) {
  if (value === null || value === undefined) return h("p", { class: "muted" }, empty);
  return h("pre", { class: "payload" }, prettyJson(value));
}

// -- notices and dialogs -----------------------------------------------------------------

/** Shows a message at the top of the page; errors stay until dismissed. */
export function notify(kind, message) {
  const box = document.getElementById("notices");
  const close = h("button", { type: "button", class: "link", "aria-label": "Dismiss" }, "×");
  const notice = h(
    "div",
    { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", {}, message),
    close,
  );
  close.addEventListener("click", () => notice.remove());
  box.append(notice);
  if (kind !== "error") setTimeout(() => notice.remove(), 5000);
  return notice;
}

/** Text for an error thrown by the API helpers (or anything else). */
export function errorText(error) {
  if (error && error.status) return `${error.status}: ${error.message}`;
  return String((error && error.message) || error);
}

/** True while any modal dialog is open (auto-refresh then waits). */
export function dialogOpen() {
  return document.querySelector("dialog[open]") !== null;
}

/**
 * Asks the operator to confirm; resolves to true (confirmed) or false.
 * `danger` styles the confirm button for destructive actions.
 */
export function confirmAction(message, { title = "Confirm", confirmLabel = "Confirm", danger = false } = {}) {
  const dialog = document.getElementById("confirm-dialog");
  dialog.querySelector(".dialog-title").textContent = title;
  dialog.querySelector(".dialog-message").textContent = message;
  const button = dialog.querySelector("[data-role=confirm]");
  button.textContent = confirmLabel;
  button.classList.toggle("danger", danger);
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), {
      once: true,
    });
    dialog.showModal();
    button.focus();
  });
}

/** Asks for the API token; resolves to it or null. `rejected`: the last one was refused. */
export function askToken(rejected) {
  const dialog = document.getElementById("token-dialog");
  const input = dialog.querySelector("input[name=token]");
  dialog.querySelector(".dialog-message").textContent = rejected
    ? "The server refused that token. Enter a valid bearer token."
    : "This server requires a bearer token. It is kept for this browser tab only.";
  input.value = "";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "confirm" && input.value.trim() ? input.value.trim() : null),
      { once: true },
    );
    dialog.showModal();
    input.focus();
  });
}

/** A prev/next pager over continuation tokens; `onPage(token)` loads a page. */
export class Pager {
  constructor(onPage) {
    this.onPage = onPage;
    this.reset();
  }

  reset() {
    // tokens[i] is the token that loads page i (page 0 needs none).
    this.tokens = [null];
    this.index = 0;
    this.next = null;
  }

  get current() {
    return this.tokens[this.index];
  }

  /** The pager's controls; `label` (e.g. "Page 2 of 40") replaces the plain page number. */
  render(label) {
    const prev = h("button", { type: "button", class: "secondary", disabled: this.index === 0 }, "← Previous");
    const next = h("button", { type: "button", class: "secondary", disabled: !this.next }, "Next →");
    prev.addEventListener("click", () => {
      this.index -= 1;
      this.onPage(this.current);
    });
    next.addEventListener("click", () => {
      this.tokens = this.tokens.slice(0, this.index + 1).concat([this.next]);
      this.index += 1;
      this.onPage(this.current);
    });
    return h("div", { class: "pager" }, prev, h("span", { class: "muted page-label" }, label || `Page ${this.index + 1}`), next);
  }
}
