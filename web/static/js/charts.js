// Charts (uPlot): equity, order rates, latency percentiles from /metrics, pulse latency.
// Every chart is redrawn at most once a second, whatever the rate of the data behind it.
import uPlot from "../vendor/uplot@1.6.32/uPlot.esm.js";

const KEEP_POINTS = 900;
const COLOURS = ["#4aa3ff", "#2fbf71", "#ef5350", "#e0a526", "#b388ff", "#4dd0e1", "#ff8a65"];

/** A "waiting for data" note over an empty chart, removed by `shown(el)`. */
function waiting(el, note) {
  const p = document.createElement("p");
  p.className = "muted nodata";
  p.textContent = note;
  el.prepend(p);
}
const shown = (el) => el.querySelector(".nodata")?.remove();

function makeChart(el, series, yLabel) {
  const opts = {
    width: Math.max(el.clientWidth, 200),
    height: 180,
    legend: { live: false },
    scales: { x: { time: true } },
    axes: [
      { stroke: "#8896a5", grid: { stroke: "#2a3440" }, ticks: { stroke: "#2a3440" } },
      { stroke: "#8896a5", grid: { stroke: "#2a3440" }, ticks: { stroke: "#2a3440" }, label: yLabel, size: 60 },
    ],
    series: [{}, ...series.map((label, i) => ({ label, stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: true }))],
  };
  const data = [[], ...series.map(() => [])];
  const chart = new uPlot(opts, data, el);
  let width = opts.width;
  new ResizeObserver(() => {  // follow the card's width (only: a redraw must not resize again)
    const now = Math.max(el.clientWidth, 200);
    if (now !== width) { width = now; chart.setSize({ width, height: 180 }); }
  }).observe(el);
  return chart;
}

/** Quantile of the observations between two scrapes of a Prometheus histogram's buckets. */
export function histogramQuantile(q, before, after) {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => (after.get(le) || 0) - (before?.get(le) || 0));
  const total = counts[counts.length - 1] || 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      const upper = bounds[i] === Infinity ? lower : bounds[i];
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lower + (upper - lower) * ((rank - below) / inBucket) : upper;
    }
    lower = bounds[i]; below = counts[i];
  }
  return lower;
}

/** The cumulative buckets {le -> count} of histogram `name` in Prometheus text, summed
 * over every label set but `le`. */
export function parseBuckets(text, name) {
  const buckets = new Map();
  const prefix = name + "_bucket{";
  for (const line of text.split("\n")) {
    if (!line.startsWith(prefix)) continue;
    const le = /le="([^"]+)"/.exec(line);
    if (!le) continue;
    const bound = le[1] === "+Inf" ? Infinity : Number(le[1]);
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    buckets.set(bound, (buckets.get(bound) || 0) + value);
  }
  return buckets;
}

export class Charts {
  constructor(feed) {
    this.feed = feed;
    this.equity = makeChart(document.getElementById("chart-equity"), ["equity"], "USD");
    this.rates = makeChart(document.getElementById("chart-rates"), ["orders/s", "fills/s", "rejects/s"], "per s");
    this.latency = makeChart(document.getElementById("chart-latency"),
      ["ack p50", "ack p99", "result p50", "result p99"], "ms");
    this.pulseEl = document.getElementById("chart-pulse");
    waiting(this.pulseEl, "no pulse yet");
    waiting(document.getElementById("chart-latency"), "waiting for two scrapes of /metrics with commands between them");
    this.latency.root.style.display = "none";  // no axes over nothing
    this.pulse = null;
    this.modules = [];
    this.equityData = [[], []];
    this.pulseData = null;
    this.latencyData = [[], [], [], [], []];
    this.lastScrape = null;
    this.dirty = new Set();
    setInterval(() => this.draw(), 1000);
    setInterval(() => this.scrape(), 3000);
  }

  addEquity(at, equity) {
    const [xs, ys] = this.equityData;
    if (xs.length && at <= xs[xs.length - 1]) return;
    // one point alone would stretch the time axis over years: start with a level minute
    if (!xs.length) { xs.push(at - 60); ys.push(Number(equity)); }
    xs.push(at); ys.push(Number(equity));
    if (xs.length > KEEP_POINTS) { xs.shift(); ys.shift(); }
    this.dirty.add("equity");
  }

  addPulse(pulse) {
    const names = Object.keys(pulse.modules || {}).sort();
    if (names.join() !== this.modules.join()) {
      this.modules = names;
      this.pulseData = [[], ...names.map(() => [])];
      this.pulse?.destroy();
      this.pulseEl.replaceChildren();
      this.pulse = makeChart(this.pulseEl, names, "ms");
    }
    const data = this.pulseData;
    data[0].push(pulse.at);
    names.forEach((name, i) => data[i + 1].push(pulse.modules[name].latency_ms ?? null));
    if (data[0].length > KEEP_POINTS) data.forEach((column) => column.shift());
    this.dirty.add("pulse");
  }

  async scrape() {
    let text;
    try {
      const response = await fetch("/metrics", { cache: "no-store" });
      if (!response.ok) return;
      text = await response.text();
    } catch {
      return;
    }
    const scrape = {
      ack: parseBuckets(text, "hean_ack_seconds"),
      result: parseBuckets(text, "hean_submit_to_result_seconds"),
    };
    const before = this.lastScrape;
    this.lastScrape = scrape;
    if (!before) return;
    const ms = (value) => (value == null ? null : value * 1000);
    const row = [Date.now() / 1000,
      ms(histogramQuantile(0.5, before.ack, scrape.ack)), ms(histogramQuantile(0.99, before.ack, scrape.ack)),
      ms(histogramQuantile(0.5, before.result, scrape.result)), ms(histogramQuantile(0.99, before.result, scrape.result))];
    row.forEach((value, i) => this.latencyData[i].push(value));
    if (this.latencyData[0].length > KEEP_POINTS) this.latencyData.forEach((column) => column.shift());
    this.dirty.add("latency");
  }

  draw() {
    const series = this.feed.series().slice(-KEEP_POINTS);
    this.rates.setData([0, 1, 2, 3].map((i) => series.map((row) => row[i])));
    if (this.dirty.has("equity")) this.equity.setData(this.equityData);
    if (this.dirty.has("latency")) {
      this.latency.setData(this.latencyData);
      if (this.latencyData[1].some((v) => v !== null)) {
        shown(document.getElementById("chart-latency"));
        this.latency.root.style.display = "";
      }
    }
    if (this.dirty.has("pulse") && this.pulse) this.pulse.setData(this.pulseData);
    this.dirty.clear();
  }
}
