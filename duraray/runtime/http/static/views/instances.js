// The instance list: server-side filters (status, created time range, id prefix), a
// client-side name filter over the loaded page, and paging by continuation token.
//
// The filters live in the URL hash ("#/instances?status=Running&prefix=order-"), so a
// reload or a shared link shows the same list; the page tokens live in memory only.

import { listInstances } from "../api.js";
import { badge, errorText, fill, formatTime, h, localInputToIso, Pager, STATUSES } from "../ui.js";

const PAGE_SIZES = ["25", "50", "100"];

export function instancesView(params) {
  const filters = {
    status: params.get("status") || "",
    from: params.get("from") || "",
    to: params.get("to") || "",
    prefix: params.get("prefix") || "",
    name: params.get("name") || "",
    top: PAGE_SIZES.includes(params.get("top")) ? params.get("top") : PAGE_SIZES[0],
  };

  const input = (name, attrs) => h("input", { name, value: filters[name], ...attrs });
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter instances" },
    h("label", { class: "field" }, "Status",
      h("select", { name: "status" },
        h("option", { value: "" }, "Any"),
        STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)))),
    h("label", { class: "field" }, "Created from", input("from", { type: "datetime-local", step: 1 })),
    h("label", { class: "field" }, "Created to", input("to", { type: "datetime-local", step: 1 })),
    h("label", { class: "field" }, "Instance ID prefix", input("prefix", { type: "search", placeholder: "order-" })),
    h("label", { class: "field" }, "Name", input("name", { type: "search", placeholder: "on this page" })),
    h("label", { class: "field field-narrow" }, "Per page",
      h("select", { name: "top" }, PAGE_SIZES.map((n) => h("option", { value: n, selected: n === filters.top }, n)))),
    h("div", { class: "filter-buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("a", { class: "button secondary", href: "#/instances" }, "Reset")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (value && !(key === "top" && value === PAGE_SIZES[0])) query.set(key, value);
    }
    const text = query.toString();
    const target = `#/instances${text ? `?${text}` : ""}`;
    // Applying unchanged filters still reloads, from the first page.
    if (location.hash === target) view.reset();
    else location.hash = target;
  });

  const status = h("div", { class: "view-status", role: "status" });
  const results = h("div", { class: "table-wrap" });
  const pagerSlot = h("div");
  const el = h(
    "section",
    { class: "view view-instances" },
    h("div", { class: "view-head" }, h("h1", {}, "Instances")),
    form,
    status,
    results,
    pagerSlot,
  );

  const pager = new Pager(() => view.refresh());
  let lastRendered = "";

  function render(items) {
    const needle = filters.name.trim().toLowerCase();
    const shown = needle ? items.filter((i) => String(i.name || "").toLowerCase().includes(needle)) : items;
    // Auto-refresh must not rebuild an unchanged table (it would lose hover and selection).
    const fingerprint = JSON.stringify([shown, pager.index, pager.next]);
    if (fingerprint === lastRendered) return;
    lastRendered = fingerprint;

    if (!shown.length) {
      fill(results, h("p", { class: "empty" }, items.length ? "No instance on this page has a matching name." : "No instances match these filters."));
    } else {
      fill(
        results,
        h("table", { class: "data instances" },
          h("thead", {}, h("tr", {},
            h("th", {}, "Instance ID"), h("th", {}, "Name"), h("th", {}, "Status"),
            h("th", {}, "Created"), h("th", {}, "Last updated"))),
          h("tbody", {}, shown.map((item) =>
            h("tr", { "data-instance-id": item.instanceId },
              h("td", { class: "mono" }, h("a", { href: `#/instances/${encodeURIComponent(item.instanceId)}` }, item.instanceId)),
              h("td", {}, item.name),
              h("td", {}, badge(item.runtimeStatus)),
              h("td", { class: "nowrap" }, formatTime(item.createdTime)),
              h("td", { class: "nowrap" }, formatTime(item.lastUpdatedTime)))))),
      );
    }
    fill(pagerSlot, pager.index > 0 || pager.next ? pager.render() : null);
    const count = needle ? `${shown.length} of ${items.length} on this page` : `${items.length} on this page`;
    fill(status, h("span", { class: "muted" }, count));
  }

  const view = {
    el,
    title: "Instances",
    reset() {
      pager.reset();
      return view.refresh();
    },
    async refresh() {
      try {
        const page = await listInstances(
          {
            status: filters.status,
            from: localInputToIso(filters.from),
            to: localInputToIso(filters.to),
            prefix: filters.prefix,
            top: filters.top,
          },
          pager.current,
        );
        pager.next = page.next;
        render(page.items);
      } catch (error) {
        lastRendered = "";
        fill(status, h("span", { class: "error-text" }, `Could not load instances: ${errorText(error)}`));
      }
    },
  };
  return view;
}
