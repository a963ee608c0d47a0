// The instance list: newest first, totals by status (clickable chips that filter), every
// filter applied by the server (status, name, id prefix, tag, created time range), paging
// over continuation tokens, and bulk actions (views/bulk.js) on a selection or on all that
// matches.
//
// The filters live in the URL hash ("#/instances?status=Running&name=ingest"), so a
// reload or a shared link shows the same list; page tokens and the selection live in
// memory only. Changing a filter builds a new view: back to page 1, selection cleared.

import { countInstances, listInstances } from "../api.js";
import { badge, errorText, fill, formatCount, formatTime, h, localInputToIso, Pager, statusName, STATUSES } from "../ui.js";
import { BulkActions } from "./bulk.js";

const PAGE_SIZES = ["25", "50", "100", "250", "500"];
// Counts with no filter but the status come from counters kept by the partitions and cost
// nothing; any other filter makes each partition scan the matching time range, so the
// auto-refresh counts those again only now and then.
const RECOUNT_MS = 30_000;

/** The list's filters out of the hash's query. */
function readFilters(params) {
  const statuses = (params.get("status") || "").split(",").map(statusName).filter((s) => STATUSES.includes(s));
  return {
    statuses: [...new Set(statuses)],
    name: params.get("name") || "",
    prefix: params.get("prefix") || "",
    tag: params.get("tag") || "",
    from: params.get("from") || "",
    to: params.get("to") || "",
    order: params.get("order") === "oldest" ? "oldest" : "newest",
    top: PAGE_SIZES.includes(params.get("top")) ? params.get("top") : PAGE_SIZES[0],
  };
}

/** The hash that shows the list with `filters` (defaults left out). */
export function instancesHash(filters) {
  const query = new URLSearchParams();
  if (filters.statuses && filters.statuses.length) query.set("status", filters.statuses.join(","));
  for (const key of ["name", "prefix", "tag", "from", "to"]) {
    if (filters[key]) query.set(key, filters[key]);
  }
  if (filters.order === "oldest") query.set("order", "oldest");
  if (filters.top && filters.top !== PAGE_SIZES[0]) query.set("top", filters.top);
  const text = query.toString();
  return `#/instances${text ? `?${text}` : ""}`;
}

/** The filters as api.js sends them (times as ISO 8601 UTC). */
function apiFilters(filters, statuses = filters.statuses) {
  return {
    statuses,
    name: filters.name,
    prefix: filters.prefix,
    tags: filters.tag ? [filters.tag] : [],
    from: localInputToIso(filters.from),
    to: localInputToIso(filters.to),
  };
}

/** The filters in words, for confirmations: "with name ingest and tag tenant:acme". */
function describe(filters) {
  const parts = [];
  if (filters.statuses.length) parts.push(`status ${filters.statuses.join(" or ")}`);
  if (filters.name) parts.push(`name “${filters.name}”`);
  if (filters.prefix) parts.push(`id prefix “${filters.prefix}”`);
  if (filters.tag) parts.push(`tag “${filters.tag}”`);
  if (filters.from) parts.push(`created from ${filters.from.replace("T", " ")}`);
  if (filters.to) parts.push(`created until ${filters.to.replace("T", " ")}`);
  return parts.length ? `the filter (${parts.join(", ")})` : "no filter (every instance in the hub)";
}

export function instancesView(params) {
  const filters = readFilters(params);
  const onlyStatus = !filters.name && !filters.prefix && !filters.tag && !filters.from && !filters.to;
  const go = (changes) => {
    location.hash = instancesHash({ ...filters, ...changes });
  };

  const input = (name, attrs) => h("input", { name, value: filters[name], ...attrs });
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter instances" },
    h("label", { class: "field" }, "Name", input("name", { type: "search", placeholder: "exact name", autocomplete: "off" })),
    h("label", { class: "field" }, "Instance ID prefix", input("prefix", { type: "search", placeholder: "order-", autocomplete: "off" })),
    h("label", { class: "field" }, "Tag", input("tag", { type: "search", placeholder: "key:value", pattern: "[^:]+:.*", title: "key:value", autocomplete: "off" })),
    h("label", { class: "field" }, "Created from", input("from", { type: "datetime-local", step: 1 })),
    h("label", { class: "field" }, "Created to", input("to", { type: "datetime-local", step: 1 })),
    h("label", { class: "field field-narrow" }, "Order",
      h("select", { name: "order" },
        h("option", { value: "newest", selected: filters.order === "newest" }, "Newest first"),
        h("option", { value: "oldest", selected: filters.order === "oldest" }, "Oldest first"))),
    h("label", { class: "field field-narrow" }, "Per page",
      h("select", { name: "top" }, PAGE_SIZES.map((n) => h("option", { value: n, selected: n === filters.top }, n)))),
    h("div", { class: "filter-buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("a", { class: "button secondary", href: "#/instances" }, "Reset")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const target = instancesHash({ ...filters, ...data });
    // Applying unchanged filters still reloads, from the first page.
    if (location.hash === target) view.reset();
    else location.hash = target;
  });
  // The page size and order apply at once, like the chips.
  for (const select of form.querySelectorAll("select")) {
    select.addEventListener("change", () => form.requestSubmit());
  }

  const total = h("span", { class: "total", role: "status" });
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Filter by status" });
  const status = h("div", { class: "view-status" });
  const results = h("div", { class: "table-wrap" });
  const pagerSlot = h("div");

  const selected = new Map(); // instance id -> its status as last shown
  let counts = null; // by status, every status, for the non-status filters; null: unknown
  let countedAt = 0;
  let countError = null;
  let items = [];
  let generation = 0; // of the latest refresh

  const bulk = new BulkActions({
    selection: () => selected,
    matching: () => ({ filters: apiFilters(filters), description: describe(filters), counts: scopedCounts() }),
    clearSelection(ids) {
      ids.forEach((id) => selected.delete(id));
      syncChecks();
    },
    finished: () => view.refresh({ force: true }),
  });

  const el = h(
    "section",
    { class: "view view-instances" },
    h("div", { class: "view-head" }, h("h1", {}, "Instances"), total),
    chips,
    form,
    bulk.el,
    status,
    results,
    pagerSlot,
  );

  const pager = new Pager(() => view.refresh());
  let lastRendered = "";

  /** The counts within the status filter (the other statuses as 0), or null. */
  function scopedCounts() {
    if (!counts) return null;
    if (!filters.statuses.length) return counts;
    return Object.fromEntries(STATUSES.map((s) => [s, filters.statuses.includes(s) ? counts[s] || 0 : 0]));
  }

  function matchingTotal() {
    const scoped = scopedCounts();
    return scoped ? STATUSES.reduce((n, s) => n + (Number(scoped[s]) || 0), 0) : null;
  }

  function toggleStatus(name) {
    const chosen = filters.statuses.includes(name) ? filters.statuses.filter((s) => s !== name) : [...filters.statuses, name];
    go({ statuses: STATUSES.filter((s) => chosen.includes(s)) });
  }

  function renderCounts() {
    const all = counts ? STATUSES.reduce((n, s) => n + (Number(counts[s]) || 0), 0) : null;
    const chip = (label, value, pressed, onclick, statusClass) =>
      h("button", { type: "button", class: `chip ${statusClass}${value === 0 ? " chip-zero" : ""}`, "aria-pressed": String(pressed), "data-status": label, onclick },
        h("span", { class: "chip-label" }, label),
        h("span", { class: "chip-count" }, value === null ? "–" : formatCount(value)));
    fill(
      chips,
      chip("All", all, !filters.statuses.length, () => go({ statuses: [] }), "chip-all"),
      STATUSES.map((s) => chip(s, counts ? counts[s] || 0 : null, filters.statuses.includes(s), () => toggleStatus(s), `status-${s.toLowerCase()}`)),
    );
    const matching = matchingTotal();
    total.dataset.total = matching === null ? "" : String(matching);
    total.title = onlyStatus || !countedAt ? "" : `Counted at ${formatTime(new Date(countedAt).toISOString())}`;
    if (matching !== null) fill(total, h("strong", {}, formatCount(matching)), " matching");
    else if (countError) fill(total, h("span", { class: "muted", title: errorText(countError) }, "total unknown"));
    else fill(total, h("span", { class: "muted" }, "counting…"));
  }

  function rowCheck(item) {
    const box = h("input", { type: "checkbox", class: "row-check", "aria-label": `Select ${item.instanceId}`, checked: selected.has(item.instanceId) });
    box.addEventListener("change", () => {
      if (box.checked) selected.set(item.instanceId, statusName(item.runtimeStatus));
      else selected.delete(item.instanceId);
      syncChecks();
    });
    return box;
  }

  const pageCheck = h("input", { type: "checkbox", class: "page-check", "aria-label": "Select all on this page" });
  pageCheck.addEventListener("change", () => {
    for (const item of items) {
      if (pageCheck.checked) selected.set(item.instanceId, statusName(item.runtimeStatus));
      else selected.delete(item.instanceId);
    }
    syncChecks();
  });

  /** Brings the checkboxes and the bulk bar in line with the selection. */
  function syncChecks() {
    for (const box of results.querySelectorAll("tr[data-instance-id] .row-check")) {
      box.checked = selected.has(box.closest("tr").dataset.instanceId);
    }
    const onPage = items.filter((item) => selected.has(item.instanceId)).length;
    pageCheck.checked = items.length > 0 && onPage === items.length;
    pageCheck.indeterminate = onPage > 0 && onPage < items.length;
    bulk.update();
  }

  function tagLinks(tags) {
    return Object.entries(tags || {}).map(([key, value]) =>
      h("a", { class: "tag", href: instancesHash({ ...filters, tag: `${key}:${value}` }), title: "Show only instances with this tag" }, `${key}:${value}`));
  }

  function renderRows() {
    // Auto-refresh must not rebuild an unchanged table (it would lose hover and focus).
    const fingerprint = JSON.stringify([items, pager.index, pager.next]);
    if (fingerprint === lastRendered) return;
    lastRendered = fingerprint;
    // The selection keeps the statuses the page now shows, for deciding what applies.
    for (const item of items) {
      if (selected.has(item.instanceId)) selected.set(item.instanceId, statusName(item.runtimeStatus));
    }
    if (!items.length) {
      fill(results, h("p", { class: "empty" }, pager.index ? "No more instances." : "No instances match these filters."));
    } else {
      fill(
        results,
        h("table", { class: "data instances" },
          h("thead", {}, h("tr", {},
            h("th", { class: "check" }, pageCheck), h("th", {}, "Instance ID"), h("th", {}, "Name"), h("th", {}, "Status"),
            h("th", {}, "Tags"), h("th", {}, "Created"), h("th", {}, "Last updated"))),
          h("tbody", {}, items.map((item) =>
            h("tr", { "data-instance-id": item.instanceId, "data-status": statusName(item.runtimeStatus) },
              h("td", { class: "check" }, rowCheck(item)),
              h("td", { class: "mono" }, h("a", { href: `#/instances/${encodeURIComponent(item.instanceId)}` }, item.instanceId)),
              h("td", {}, h("a", { class: "name-link", href: instancesHash({ ...filters, name: item.name }), title: `Show only ${item.name} instances` }, item.name)),
              h("td", {}, badge(item.runtimeStatus)),
              h("td", { class: "tags" }, tagLinks(item.tags)),
              h("td", { class: "nowrap" }, formatTime(item.createdTime)),
              h("td", { class: "nowrap" }, formatTime(item.lastUpdatedTime)))))),
      );
    }
    syncChecks();
  }

  function renderPager() {
    const top = Number(filters.top);
    const matching = matchingTotal();
    const first = pager.index * top + 1;
    let label = `Page ${pager.index + 1}`;
    if (items.length) label = `Rows ${formatCount(first)}–${formatCount(first + items.length - 1)}`;
    if (matching !== null) {
      label += ` of ${formatCount(matching)} · page ${formatCount(pager.index + 1)} of ${formatCount(Math.max(1, Math.ceil(matching / top)))}`;
    }
    fill(pagerSlot, pager.index > 0 || pager.next ? pager.render(label) : null);
  }

  /**
   * Counts the matches again. The counts are for every status (the chips show them all),
   * so the status filter is left out of them; they do not depend on the page, so only a
   * newer count replaces them.
   */
  let counting = 0;
  function recountNow() {
    counting += 1;
    const mine = counting;
    const settle = (got, error) => {
      if (mine !== counting) return;
      counts = got;
      countError = error;
      if (got) countedAt = Date.now();
      renderCounts();
      renderPager();
      bulk.update();
    };
    return countInstances(apiFilters(filters, [])).then((got) => settle(got, null), (error) => settle(null, error));
  }

  const view = {
    el,
    title: "Instances",
    reset() {
      pager.reset();
      return view.refresh({ force: true });
    },
    async refresh({ force = false } = {}) {
      // A newer refresh (a click on Next while auto-refresh was loading) wins: answers
      // to an older one are dropped, so rows and page label never come from two pages.
      generation += 1;
      const mine = generation;
      const current = () => mine === generation;
      const recount = force || onlyStatus || Date.now() - countedAt > RECOUNT_MS;
      // The rows do not wait for the counts, which take longer (a scan) with some filters.
      const recounted = recount ? recountNow() : null;
      try {
        const page = await listInstances(apiFilters(filters), { top: filters.top, newestFirst: filters.order === "newest", token: pager.current });
        if (current()) {
          pager.next = page.next;
          items = page.items;
          fill(status);
          renderRows();
          renderPager();
        }
      } catch (error) {
        if (current()) {
          lastRendered = "";
          fill(status, h("span", { class: "error-text" }, `Could not load instances: ${errorText(error)}`));
        }
      }
      await recounted;
    },
  };
  renderCounts();
  bulk.update();
  return view;
}
