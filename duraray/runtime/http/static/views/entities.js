// Durable entities: a list with state and lock holder, and one entity's page.

import { getEntity, listEntities } from "../api.js";
import { errorText, fill, formatTime, h, Pager, payloadBlock, preview } from "../ui.js";

/** {name, key} out of an entity id, which the API may send as "@name@key" or an object. */
export function parseEntityId(id) {
  if (id && typeof id === "object") return { name: String(id.name ?? ""), key: String(id.key ?? "") };
  const text = String(id ?? "");
  if (text.startsWith("@")) {
    const at = text.indexOf("@", 1);
    if (at > 0) return { name: text.slice(1, at), key: text.slice(at + 1) };
  }
  return { name: text, key: "" };
}

const entityHref = ({ name, key }) => `#/entities/${encodeURIComponent(name)}/${encodeURIComponent(key)}`;

function lockCell(lockedBy) {
  if (!lockedBy) return h("span", { class: "muted" }, "—");
  return h("a", { class: "mono lock", href: `#/instances/${encodeURIComponent(lockedBy)}`, title: "Orchestration holding the lock" }, lockedBy);
}

export function entitiesView(params) {
  const nameFilter = params.get("name") || "";
  const nameInput = h("input", { name: "name", type: "search", value: nameFilter, placeholder: "counter" });
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter entities" },
    h("label", { class: "field" }, "Entity name", nameInput),
    h("div", { class: "filter-buttons" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("a", { class: "button secondary", href: "#/entities" }, "Reset")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = nameInput.value.trim();
    const target = value ? `#/entities?name=${encodeURIComponent(value)}` : "#/entities";
    if (location.hash === target) view.refresh();
    else location.hash = target;
  });

  const status = h("div", { class: "view-status", role: "status" });
  const results = h("div", { class: "table-wrap" });
  const pagerSlot = h("div");
  const el = h("section", { class: "view view-entities" }, h("div", { class: "view-head" }, h("h1", {}, "Entities")), form, status, results, pagerSlot);
  const pager = new Pager(() => view.refresh());
  let lastRendered = "";

  function render(items) {
    const fingerprint = JSON.stringify([items, pager.index, pager.next]);
    if (fingerprint === lastRendered) return;
    lastRendered = fingerprint;
    fill(status, h("span", { class: "muted" }, `${items.length} on this page`));
    fill(pagerSlot, pager.index > 0 || pager.next ? pager.render() : null);
    if (!items.length) {
      fill(results, h("p", { class: "empty" }, nameFilter ? `No entities named “${nameFilter}”.` : "No entities yet."));
      return;
    }
    fill(
      results,
      h("table", { class: "data entities" },
        h("thead", {}, h("tr", {}, h("th", {}, "Entity"), h("th", {}, "Key"), h("th", {}, "State"), h("th", {}, "Locked by"), h("th", { class: "num" }, "Backlog"), h("th", {}, "Last modified"))),
        h("tbody", {}, items.map((item) => {
          const id = parseEntityId(item.entityId);
          return h("tr", {},
            h("td", {}, h("a", { href: entityHref(id) }, id.name)),
            h("td", { class: "mono" }, id.key),
            h("td", { class: "mono state-preview", title: preview(item.state, 2000) }, preview(item.state, 70) || h("span", { class: "muted" }, "—")),
            h("td", {}, lockCell(item.lockedBy)),
            h("td", { class: "num" }, item.backlogQueueSize ?? 0),
            h("td", { class: "nowrap" }, formatTime(item.lastModified)));
        }))),
    );
  }

  const view = {
    el,
    title: "Entities",
    async refresh() {
      try {
        const page = await listEntities({ name: nameFilter, top: 50 }, pager.current);
        pager.next = page.next;
        render(page.items);
      } catch (error) {
        lastRendered = "";
        fill(status, h("span", { class: "error-text" }, `Could not load entities: ${errorText(error)}`));
      }
    },
  };
  return view;
}

export function entityView(name, key) {
  const body = h("div");
  const el = h(
    "section",
    { class: "view view-entity" },
    h("p", { class: "crumbs" }, h("a", { href: "#/entities" }, "← Entities")),
    h("div", { class: "view-head" }, h("h1", {}, h("span", {}, name), h("span", { class: "muted" }, " @ "), h("span", { class: "mono" }, key))),
    body,
  );
  let lastJson = "";
  const view = {
    el,
    title: `${name}@${key}`,
    async refresh() {
      try {
        const entity = await getEntity(name, key);
        const json = JSON.stringify(entity);
        if (json === lastJson) return;
        lastJson = json;
        fill(
          body,
          h("dl", { class: "facts" },
            h("dt", {}, "Locked by"), h("dd", {}, lockCell(entity.lockedBy)),
            h("dt", {}, "Backlog"), h("dd", {}, entity.backlogQueueSize ?? 0),
            h("dt", {}, "Last modified"), h("dd", {}, formatTime(entity.lastModified))),
          h("section", { class: "panel" }, h("h2", {}, "State"), payloadBlock(entity.state, { empty: "no state" })),
        );
      } catch (error) {
        lastJson = "";
        const text = error.status === 404 ? `No entity ${name}@${key}.` : `Could not load the entity: ${errorText(error)}`;
        fill(body, h("p", { class: error.status === 404 ? "empty" : "error-text" }, text));
      }
    },
  };
  return view;
}
