// Partition load: queue depth, batch size, commit latency and instance counts per
// partition, with totals. Counters are cumulative since the partition started; rates
// come from the difference between two refreshes. Parked items (work a partition set
// aside because applying it failed) are shown per partition and in total, flagged when
// there are any: they never go away by themselves, so one is worth an operator's look.

import { listPartitions } from "../api.js";
import { badge, errorText, fill, formatDuration, h } from "../ui.js";

const num = (v) => (Number.isFinite(Number(v)) ? Number(v) : 0);
const fmt = (v, digits = 0) => num(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** A latency given in ms, in µs or with decimals where they matter (a commit can take µs). */
function latency(millis) {
  if (millis < 1) return `${fmt(millis * 1000)} µs`;
  return millis < 10 ? `${fmt(millis, 2)} ms` : formatDuration(millis);
}

/** Average batch size and commit latency (ms) from the counters. */
function derived(counters) {
  const batches = num(counters.batches);
  return {
    batchSize: batches ? num(counters.items) / batches : 0,
    commitMs: batches ? (num(counters.commit_seconds) / batches) * 1000 : 0,
  };
}

function liveBadges(live) {
  const entries = Object.entries(live || {}).filter(([, n]) => n > 0);
  if (!entries.length) return h("span", { class: "muted" }, "none");
  return h("span", { class: "badges" }, entries.map(([status, n]) => h("span", { class: "badge-count" }, badge(status), h("span", { class: "count" }, n))));
}

function card(label, value, hint, extraClass = "") {
  return h("div", { class: `card ${extraClass}`.trim() }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value), hint ? h("div", { class: "card-hint muted" }, hint) : null);
}

/** The partition's parked count, flagged when non-zero; poison and rebuild counters in the tooltip. */
function parkedCell(p) {
  const parked = num(p.parked);
  const c = p.counters || {};
  const title = `${fmt(c.poison_items)} poison items, ${fmt(c.rebuilds)} rebuilds since the partition started`;
  return h("td", { class: parked > 0 ? "num parked-alert" : "num", title, "data-parked": parked }, fmt(parked));
}

export function partitionsView() {
  const status = h("div", { class: "view-status", role: "status" });
  const cards = h("div", { class: "cards" });
  const table = h("div", { class: "table-wrap" });
  const el = h(
    "section",
    { class: "view view-partitions" },
    h("div", { class: "view-head" }, h("h1", {}, "Partitions")),
    status,
    cards,
    table,
    h("p", { class: "muted footnote" }, "Batch size is items per committed batch; commit latency is the mean time to commit a batch to the log. Counters are totals since each partition started; rates compare the last two refreshes. Parked items failed on their own inside a partition and were set aside; list them with GET /api/parked or `duraray parked`."),
  );
  let previous = null; // {at, byPartition} of the last refresh, for rates

  function render(stats) {
    const now = performance.now();
    const before = previous;
    previous = { at: now, byPartition: new Map(stats.map((p) => [p.partition, p.counters || {}])) };
    const seconds = before ? (now - before.at) / 1000 : 0;
    const rate = (p, field) => {
      const old = before && before.byPartition.get(p.partition);
      if (!old || seconds <= 0) return null;
      return Math.max(0, num((p.counters || {})[field]) - num(old[field])) / seconds;
    };

    const total = (fn) => stats.reduce((sum, p) => sum + num(fn(p)), 0);
    const allCounters = ["batches", "items", "commit_seconds"].reduce((acc, k) => ({ ...acc, [k]: total((p) => (p.counters || {})[k]) }), {});
    const overall = derived(allCounters);
    const live = {};
    for (const p of stats) for (const [s, n] of Object.entries(p.live_instances || {})) live[s] = (live[s] || 0) + num(n);
    const itemsRate = before ? stats.reduce((sum, p) => sum + (rate(p, "items") || 0), 0) : null;
    const parkedTotal = total((p) => p.parked);

    fill(
      cards,
      card("Partitions", fmt(stats.length)),
      card("Queue depth", fmt(total((p) => p.queue_depth)), "messages waiting"),
      card("Live instances", fmt(Object.values(live).reduce((a, b) => a + b, 0)), "in memory"),
      card("Activities in flight", fmt(total((p) => p.activities_in_flight))),
      card("Avg batch size", fmt(overall.batchSize, 1), itemsRate === null ? "items per batch" : `${fmt(itemsRate, 1)} items/s now`),
      card("Commit latency", latency(overall.commitMs), "mean per batch"),
      card("Parked items", fmt(parkedTotal), parkedTotal > 0 ? "set aside: see GET /api/parked" : "none set aside", parkedTotal > 0 ? "card-alert" : ""),
    );

    const maxQueue = Math.max(1, ...stats.map((p) => num(p.queue_depth)));
    fill(
      table,
      h("table", { class: "data partitions" },
        h("thead", {}, h("tr", {},
          h("th", {}, "Partition"), h("th", {}, "Queue depth"), h("th", { class: "num" }, "Batches"),
          h("th", { class: "num" }, "Avg batch"), h("th", { class: "num" }, "Commit latency"),
          h("th", { class: "num" }, "Episodes"), h("th", { class: "num" }, "Replays"),
          h("th", { class: "num" }, "Activities"), h("th", { class: "num" }, "In flight"),
          h("th", { class: "num" }, "Timers"), h("th", { class: "num" }, "Outbox"),
          h("th", { class: "num" }, "Cached"), h("th", { class: "num" }, "Parked"),
          h("th", {}, "Live instances"))),
        h("tbody", {}, stats.map((p) => {
          const c = p.counters || {};
          const d = derived(c);
          const depth = num(p.queue_depth);
          const batchesRate = rate(p, "batches");
          return h("tr", { "data-partition": p.partition },
            h("td", { class: "mono" }, p.partition),
            h("td", {},
              h("div", { class: "meter-cell" },
                h("span", { class: "meter" }, h("span", { class: "meter-fill", style: `width:${((depth / maxQueue) * 100).toFixed(1)}%` })),
                h("span", { class: "num" }, fmt(depth)))),
            h("td", { class: "num", title: batchesRate === null ? null : `${fmt(batchesRate, 1)} batches/s` }, fmt(c.batches)),
            h("td", { class: "num" }, fmt(d.batchSize, 1)),
            h("td", { class: "num" }, latency(d.commitMs)),
            h("td", { class: "num" }, fmt(c.episodes)),
            h("td", { class: "num" }, fmt(c.replays)),
            h("td", { class: "num", title: "activities dispatched" }, fmt(c.activities_dispatched)),
            h("td", { class: "num" }, fmt(p.activities_in_flight)),
            h("td", { class: "num" }, fmt(p.timers)),
            h("td", { class: "num" }, fmt(p.outbox)),
            h("td", { class: "num", title: "cached executors" }, fmt(p.cached_executors)),
            parkedCell(p),
            h("td", {}, liveBadges(p.live_instances)));
        }))),
    );
    fill(status);
  }

  const view = {
    el,
    title: "Partitions",
    async refresh() {
      try {
        render(await listPartitions());
      } catch (error) {
        fill(status, h("span", { class: "error-text" }, `Could not load partitions: ${errorText(error)}`));
      }
    },
  };
  return view;
}
