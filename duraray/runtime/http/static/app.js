// The dashboard's entry point: hash routing, auto-refresh and the API token prompt.
//
// Routes (in the URL hash, so the server only ever serves "/"):
//   #/instances[?filters]      the instance list
//   #/instances/{id}           one instance
//   #/entities[?name=]         the entity list
//   #/entities/{name}/{key}    one entity
//   #/partitions               partition load

import { forgetToken, getToken, setTokenPrompt } from "./api.js";
import { askToken, dialogOpen, fill, h } from "./ui.js";
import { entitiesView, entityView } from "./views/entities.js";
import { instanceView } from "./views/instance.js";
import { instancesView } from "./views/instances.js";
import { partitionsView } from "./views/partitions.js";

const main = document.getElementById("view");
const autoRefresh = document.getElementById("auto-refresh");
const refreshEvery = document.getElementById("refresh-every");
const forgetButton = document.getElementById("forget-token");

let view = null;

/** The view for a hash, or null for an unknown one. */
function route(hash) {
  const [path, query = ""] = hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  const section = parts[0] || "instances";
  if (section === "instances" && parts.length === 1) return [section, instancesView(params)];
  // Instance ids may contain "/", so everything after "instances/" is the id.
  if (section === "instances") return [section, instanceView(parts.slice(1).join("/"))];
  if (section === "entities" && parts.length === 1) return [section, entitiesView(params)];
  if (section === "entities" && parts.length >= 3) return [section, entityView(parts[1], parts.slice(2).join("/"))];
  if (section === "partitions") return [section, partitionsView()];
  return [null, null];
}

async function show() {
  const [section, next] = route(location.hash);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.section === section);
  }
  if (!next) {
    view = null;
    fill(main, h("p", { class: "empty" }, "No such page. ", h("a", { href: "#/instances" }, "Back to the instances.")));
    return;
  }
  view = next;
  document.title = `${next.title} · duraray`;
  fill(main, next.el);
  await next.refresh({ force: true });
  updateTokenButton();
}

function updateTokenButton() {
  forgetButton.hidden = !getToken();
}

// Auto-refresh reloads the current view's data every few seconds (the interval is the
// operator's choice); a view keeps what it shows when nothing changed. It pauses while a
// dialog is open (so a confirmation is not pulled away from under the operator), while
// the tab is hidden, and while the last refresh still runs.
const refreshMs = () => Number(refreshEvery.value) || 5000;
let refreshing = false;
let timer = null;
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(tick, refreshMs());
}
async function tick() {
  if (view && autoRefresh.checked && !dialogOpen() && document.visibilityState === "visible" && !refreshing) {
    refreshing = true;
    const current = view;
    try {
      await current.refresh();
    } finally {
      refreshing = false;
    }
  }
  schedule();
}

setTokenPrompt(askToken);
forgetButton.addEventListener("click", () => {
  forgetToken();
  updateTokenButton();
});
autoRefresh.checked = sessionStorage.getItem("duraray.autoRefresh") !== "off";
autoRefresh.addEventListener("change", () => {
  sessionStorage.setItem("duraray.autoRefresh", autoRefresh.checked ? "on" : "off");
  refreshEvery.disabled = !autoRefresh.checked;
});
const savedEvery = sessionStorage.getItem("duraray.refreshEvery");
if ([...refreshEvery.options].some((o) => o.value === savedEvery)) refreshEvery.value = savedEvery;
refreshEvery.disabled = !autoRefresh.checked;
refreshEvery.addEventListener("change", () => {
  sessionStorage.setItem("duraray.refreshEvery", refreshEvery.value);
  schedule(); // a shorter interval applies now, not after the longer one runs out
});
window.addEventListener("hashchange", show);
if (!location.hash) history.replaceState(null, "", "#/instances");
show();
schedule();
