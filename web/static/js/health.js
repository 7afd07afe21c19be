// Health: every module from the pulse (status colour, latency, a sparkline of its last latencies),
// every pulse node and Celery worker, the pulse's age, and a banner when anything is not HEALTHY.

const SPARK_POINTS = 60;
const STALE_MS = 1000;
const css = (status) => ({ HEALTHY: "good", DEGRADED: "warn" })[status] || "bad";

function drawSpark(canvas, values) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 120, height = canvas.clientHeight || 22;
  if (canvas.width !== width * ratio) { canvas.width = width * ratio; canvas.height = height * ratio; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const known = values.filter((v) => v !== null);
  if (known.length < 2) return;
  const top = Math.max(...known, 1);
  ctx.strokeStyle = "#4aa3ff";
  ctx.lineWidth = 1.2;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / (SPARK_POINTS - 1)) * width;
    const y = height - 1 - ((v ?? 0) / top) * (height - 2);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

export class Health {
  constructor() {
    this.tbody = document.querySelector("#modules tbody");
    this.rows = new Map();  // module -> {tr, cells, canvas, latencies}
    this.last = null;
    this.receivedAt = 0;
    this.nodes = {};
    setInterval(() => this.tick(), 250);
    setInterval(() => this.loadNodes(), 2000);
    this.loadNodes();
  }

  pulse(pulse) {
    this.last = pulse;
    this.receivedAt = performance.now();
    const overall = document.getElementById("overall");
    overall.textContent = pulse.overall;
    overall.className = "badge " + css(pulse.overall);
    for (const module of Object.values(pulse.modules || {})) this.module(module);
    this.workers(pulse.modules?.workers?.detail?.workers || {});
    this.banner();
  }

  module(m) {
    let row = this.rows.get(m.name);
    if (!row) {
      const tr = document.createElement("tr");
      tr.dataset.module = m.name;
      const cells = [0, 1, 2, 3, 4].map(() => tr.appendChild(document.createElement("td")));
      const canvas = cells[3].appendChild(document.createElement("canvas"));
      canvas.className = "spark";
      cells[4].className = "error";
      row = { tr, cells, canvas, latencies: new Array(SPARK_POINTS).fill(null) };
      this.rows.set(m.name, row);
      const after = [...this.rows.keys()].sort();
      this.tbody.replaceChildren(...after.map((name) => this.rows.get(name).tr));
    }
    row.tr.dataset.status = m.status;
    row.cells[0].textContent = m.name;
    row.cells[1].textContent = m.status + (m.pending ? " …" : "");
    row.cells[1].className = css(m.status);
    row.cells[2].textContent = m.latency_ms == null ? "–" : `${m.latency_ms.toFixed(1)} ms`;
    row.cells[4].textContent = m.status === "HEALTHY" ? "" : m.last_error || "";
    row.latencies.push(m.latency_ms ?? null);
    row.latencies.shift();
    drawSpark(row.canvas, row.latencies);
  }

  workers(workers) {
    this.workersSeen = workers;
    this.renderNodes();
  }

  async loadNodes() {
    try {
      const response = await fetch("/api/system/health/pulse", { cache: "no-store" });
      if (response.ok) this.nodes = (await response.json()).nodes || {};
    } catch {
      // the web process is restarting: keep the last view; the banner says the pulse is stale
    }
    this.renderNodes();
  }

  renderNodes() {
    const chips = [];
    const add = (kind, name, status, note) => {
      const li = document.createElement("li");
      li.dataset.node = name;
      li.className = css(status);
      li.textContent = `${kind} ${name}: ${status}${note ? " · " + note : ""}`;
      chips.push(li);
    };
    for (const [name, node] of Object.entries(this.nodes)) {
      add("pulse node", name, node.status, node.age_ms == null ? "" : `${Math.round(node.age_ms)} ms ago`);
    }
    for (const [name, worker] of Object.entries(this.workersSeen || {})) {
      add("worker", name, worker.status,
        worker.age_ms == null ? "" : `seen ${(worker.age_ms / 1000).toFixed(1)} s ago`);
    }
    document.getElementById("nodes").replaceChildren(...chips);
  }

  tick() {
    const ageEl = document.getElementById("pulse-age");
    if (!this.last) return;
    const age = performance.now() - this.receivedAt;
    ageEl.textContent = `pulse ${(age / 1000).toFixed(1)} s ago`;
    ageEl.className = age > STALE_MS ? "bad" : "muted";
    ageEl.dataset.ageMs = Math.round(age);
    this.banner();
  }

  banner() {
    const problems = [];
    const age = performance.now() - this.receivedAt;
    if (this.last && age > STALE_MS) problems.push(`no pulse for ${(age / 1000).toFixed(1)} s`);
    for (const m of Object.values(this.last?.modules || {})) {
      if (m.status !== "HEALTHY") problems.push(`${m.name} ${m.status}${m.last_error ? ": " + m.last_error : ""}`);
    }
    const banner = document.getElementById("banner");
    const text = problems.length ? "⚠ " + problems.join(" · ") : "";
    if (banner.textContent !== text) banner.textContent = text;
    banner.hidden = !problems.length;
  }
}
