// The live feed of orders, fills, cancels and rejects, aggregated so that thousands of results
// a second never freeze the page: each result is only counted when it arrives (no DOM work);
// the table (at most MAX_ROWS rows) and the counters are redrawn at most once per animation
// frame, and no more often than every RENDER_EVERY_MS.

const MAX_ROWS = 100;
const RENDER_EVERY_MS = 250;

/** Remembers recently seen request ids (two generations) so a result delivered twice
 * (to the sender and to the operators room) is counted once. */
class RecentIds {
  constructor(size) { this.size = size; this.now = new Set(); this.before = new Set(); }
  seen(id) {
    if (this.now.has(id) || this.before.has(id)) return true;
    this.now.add(id);
    if (this.now.size >= this.size) { this.before = this.now; this.now = new Set(); }
    return false;
  }
}

const trim = (text) => (/^-?\d+\.\d+$/.test(String(text)) ? String(text).replace(/\.?0+$/, "") : text);

const rejectReason = (error) => {
  // single orders fail with a code, and the core's reason at the end of the message
  const match = /rejected: ([A-Z_]+)/.exec(error.message || "");
  return match ? match[1] : (error.code || "error").toUpperCase();
};

export class Feed {
  constructor(tbody, countsEl) {
    this.tbody = tbody;
    this.countsEl = countsEl;
    this.rows = new Array(MAX_ROWS);  // ring buffer of the newest rows
    this.next = 0;
    this.filled = 0;
    this.totals = { orders: 0, fills: 0, rejects: 0, cancels: 0 };
    this.reasons = new Map();
    this.ids = new RecentIds(20000);
    this.second = Math.floor(Date.now() / 1000);
    this.current = { orders: 0, fills: 0, rejects: 0 };
    this.perSecond = [];  // [unix second, orders, fills, rejects] for each completed second
    this.dirty = false;
    this.scheduled = false;
    this.lastRender = 0;
    this.frames = 0;
  }

  /** One `command_result` from the operators room (cheap: counting and one row at most). */
  add(result) {
    if (!result || this.ids.seen(result.request_id)) return;
    const command = result.command;
    if (command === "submit_order") {
      if (result.success) this.order(result.result.order);
      else if (["order_rejected", "engine_halted", "engine_stopped", "rate_limited"].includes(result.error?.code)) {
        this.reject(rejectReason(result.error), result.error.message);
      } else return;
    } else if (command === "submit_orders") {
      if (!result.success) return;
      const body = result.result;
      for (const order of body.results || []) this.order(order, false);
      const first = (body.results || [])[0];
      this.row("batch", first ? `${first.client_order_id} …` : "",
        `${body.count} orders: ${body.filled} filled, ${body.resting} resting, ${body.expired} expired, ${body.rejected} rejected`, "");
    } else if (command === "update_market") {
      if (!result.success) return;
      for (const fill of result.result.fills || []) {
        this.count("fills");
        this.row("fill", fill.client_order_id, `${fill.side} ${trim(fill.quantity)} ${fill.symbol} @ ${trim(fill.price)}`, "good");
      }
    } else if (command === "cancel_order") {
      if (!result.success) return;
      this.totals.cancels += 1;
      this.row("cancel", result.result.client_order_id, "cancelled", "warn");
    } else {
      return;
    }
    this.schedule();
  }

  order(order, withRow = true) {
    this.count("orders");
    if (order.status === "REJECTED") {
      this.reject(order.reject_reason || "REJECTED", "", order.client_order_id, withRow);
      return;
    }
    if (order.status === "FILLED") this.count("fills");
    if (withRow) {
      const price = order.fill_price ? ` @ ${trim(order.fill_price)}` : "";
      this.row(order.status === "FILLED" ? "fill" : "order", order.client_order_id,
        `${order.status} ${trim(order.filled_quantity)}${price}`, order.status === "FILLED" ? "good" : "");
    }
  }

  reject(reason, message, orderId = "", withRow = true) {
    this.count("rejects");
    this.reasons.set(reason, (this.reasons.get(reason) || 0) + 1);
    if (withRow) this.row("reject", orderId || /order (\S+)/.exec(message)?.[1] || "", reason, "bad");
  }

  count(kind) {
    const second = Math.floor(Date.now() / 1000);
    if (second !== this.second) this.roll(second);
    this.totals[kind] += 1;
    this.current[kind] += 1;
  }

  roll(second) {
    this.perSecond.push([this.second, this.current.orders, this.current.fills, this.current.rejects]);
    if (this.perSecond.length > 600) this.perSecond.splice(0, this.perSecond.length - 600);
    for (let s = this.second + 1; s < second && s > second - 600; s++) this.perSecond.push([s, 0, 0, 0]);
    this.second = second;
    this.current = { orders: 0, fills: 0, rejects: 0 };
  }

  row(kind, orderId, detail, css) {
    this.rows[this.next] = { at: Date.now(), kind, orderId, detail, css };
    this.next = (this.next + 1) % MAX_ROWS;
    this.filled = Math.min(this.filled + 1, MAX_ROWS);
    this.dirty = true;
  }

  /** The per-second series up to now (the chart reads it once a second). */
  series() {
    const second = Math.floor(Date.now() / 1000);
    if (second !== this.second) this.roll(second);
    return this.perSecond;
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame((now) => this.render(now));
  }

  render(now) {
    this.scheduled = false;
    if (now - this.lastRender < RENDER_EVERY_MS) { this.schedule(); return; }
    this.lastRender = now;
    this.frames += 1;
    const reasons = [...this.reasons].map(([r, n]) => `${r} ${n.toLocaleString()}`).join(", ");
    this.countsEl.textContent = `orders ${this.totals.orders.toLocaleString()} · fills ${this.totals.fills.toLocaleString()}`
      + ` · rejects ${this.totals.rejects.toLocaleString()}${reasons ? ` (${reasons})` : ""}`
      + ` · cancels ${this.totals.cancels.toLocaleString()}`;
    this.countsEl.dataset.orders = this.totals.orders;
    this.countsEl.dataset.fills = this.totals.fills;
    this.countsEl.dataset.rejects = this.totals.rejects;
    if (!this.dirty) return;
    this.dirty = false;
    const fragment = document.createDocumentFragment();
    for (let i = 1; i <= this.filled; i++) {
      const row = this.rows[(this.next - i + MAX_ROWS) % MAX_ROWS];
      const tr = document.createElement("tr");
      tr.className = row.css;
      tr.dataset.kind = row.kind;
      for (const text of [new Date(row.at).toLocaleTimeString(), row.kind, row.orderId, row.detail]) {
        tr.appendChild(document.createElement("td")).textContent = text;
      }
      fragment.appendChild(tr);
    }
    this.tbody.replaceChildren(fragment);
  }
}
