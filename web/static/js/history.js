// The order history panel: orders and fills from the database (GET /api/orders, /api/fills),
// filtered by the form, newest first, a page at a time ("more" follows the API's cursor). The
// server's rows are set as text, never as HTML; its 400s are shown next to the form, at the field.

const el = (tag, text, css) => {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (css) node.className = css;
  return node;
};
// Decimals arrive as exact strings ("10000.00000000"): shown without the trailing zeros.
const trim = (text) => (/^-?\d+\.\d+$/.test(text) ? text.replace(/\.?0+$/, "") : text);
const fmt = (value) => (value === null || value === undefined || value === "" ? "–" : trim(String(value)));
const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "–");
const STATUS_CSS = { FILLED: "good", RESTING: "warn", REJECTED: "bad", EXPIRED: "muted", CANCELLED: "muted" };

/** The columns of each tab: [heading, row → text]. */
export const COLUMNS = {
  orders: [
    ["time", (r) => when(r.executed_at)],
    ["client order id", (r) => fmt(r.client_order_id)],
    ["symbol", (r) => fmt(r.symbol)],
    ["side", (r) => fmt(r.side)],
    ["type", (r) => fmt(r.order_type) + (r.time_in_force ? " " + r.time_in_force : "")],
    ["qty", (r) => fmt(r.quantity)],
    ["price", (r) => fmt(r.price)],
    ["status", (r) => fmt(r.status)],
    ["filled", (r) => fmt(r.filled_quantity)],
    ["fill price", (r) => fmt(r.fill_price)],
    ["reason", (r) => fmt(r.reject_reason)],
  ],
  fills: [
    ["time", (r) => when(r.executed_at)],
    ["client order id", (r) => fmt(r.client_order_id)],
    ["order", (r) => fmt(r.order_id)],
    ["symbol", (r) => fmt(r.symbol)],
    ["side", (r) => fmt(r.side)],
    ["qty", (r) => fmt(r.quantity)],
    ["price", (r) => fmt(r.price)],
    ["fee", (r) => fmt(r.fee)],
  ],
};

/** A datetime-local value (the browser's local time) as ISO 8601 UTC; "" stays "". */
export function isoTime(local) {
  if (!local) return "";
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? local : date.toISOString();  // the server names a bad one
}

function row(kind, item) {
  const tr = el("tr");
  tr.dataset.id = item.id;
  tr.dataset.symbol = item.symbol ?? "";
  tr.dataset.clientOrderId = item.client_order_id ?? "";
  if (kind === "orders") tr.dataset.status = item.status ?? "";
  for (const [heading, cell] of COLUMNS[kind]) {
    const td = el("td", cell(item));
    if (heading === "status") td.className = STATUS_CSS[item.status] || "";
    if (heading === "reason") td.className = "error";
    tr.append(td);
  }
  return tr;
}

/** The panel: `root` holds #history-form, #history-error, the tab buttons, #history-body and
 * #history-more; `token()` gives the bearer token. */
export class OrderHistory {
  constructor(root, token) {
    this.root = root;
    this.token = token;
    this.form = root.querySelector("#history-form");
    this.error = root.querySelector("#history-error");
    this.body = root.querySelector("#history-body");
    this.more = root.querySelector("#history-more");
    this.count = root.querySelector("#history-count");
    this.tabs = [...root.querySelectorAll("[data-history-tab]")];
    this.kind = "orders";
    this.limit = 100;     // rows a page (the API's default; at most 1,000)
    this.shown = null;    // the tab and filters of the rows shown (a "more" keeps them)
    this.cursor = null;
    this.latest = 0;      // the newest request's number: an older answer arriving late is dropped
    this.rows = 0;
    this.form.addEventListener("submit", (event) => { event.preventDefault(); this.load(); });
    this.more.addEventListener("click", () => this.load(true));
    for (const tab of this.tabs) tab.addEventListener("click", () => this.show(tab.dataset.historyTab));
  }

  /** Switch to the orders or fills tab and load it with the form's filters. */
  show(kind) {
    this.kind = kind;
    for (const tab of this.tabs) tab.setAttribute("aria-selected", String(tab.dataset.historyTab === kind));
    this.form.status.disabled = kind !== "orders";  // fills have no status
    return this.load();
  }

  filters() {
    const query = new URLSearchParams({ limit: String(this.limit) });
    const f = this.form;
    if (f.symbol.value.trim()) query.set("symbol", f.symbol.value.trim());
    if (f.side.value) query.set("side", f.side.value);
    if (this.kind === "orders" && f.status.value) query.set("status", f.status.value);
    if (f.from.value) query.set("from", isoTime(f.from.value));
    if (f.to.value) query.set("to", isoTime(f.to.value));
    return query;
  }

  showError(message, field) {
    this.error.textContent = message;
    for (const input of this.form.querySelectorAll("input, select")) {
      input.classList.toggle("invalid", Boolean(field) && input.name === field);
    }
    this.body.dataset.state = message ? "error" : "ok";
  }

  /** Fetch the first page with the form's filters, or (`next`) the page after the rows shown. */
  async load(next = false) {
    if (next && (this.cursor === null || this.more.disabled || !this.shown)) return;
    const kind = next ? this.shown.kind : this.kind;
    const query = next ? new URLSearchParams(this.shown.query) : this.filters();
    if (next) query.set("cursor", String(this.cursor));
    const id = ++this.latest;  // a newer search wins: this one's answer is then dropped
    this.more.disabled = true;
    try {
      const response = await fetch(`/api/${kind}?${query}`, { headers: { Authorization: "Bearer " + this.token() } });
      const data = response.status === 404 ? null : await response.json().catch(() => null);
      if (id !== this.latest) return;
      if (response.status === 404) {
        this.body.dataset.available = "false";
        this.body.replaceChildren(el("p", `not available: this server has no order history (/api/${kind})`, "muted"));
        return;
      }
      this.body.dataset.available = "true";
      if (!response.ok) {
        const error = data?.error;
        this.showError(error?.message ? String(error.message) : `HTTP ${response.status}`, error?.field);
        return;
      }
      this.showError("", null);
      const items = Array.isArray(data?.[kind]) ? data[kind] : [];
      if (!next) {
        this.shown = { kind, query: query.toString() };
        this.rows = 0;
        const t = el("table");
        t.id = "history-table";
        t.dataset.kind = kind;
        t.append(el("thead"), el("tbody"));
        const head = el("tr");
        for (const [heading] of COLUMNS[kind]) head.append(el("th", heading, heading === "reason" ? "error" : ""));
        t.tHead.append(head);
        this.body.replaceChildren(t);
      }
      const tbody = this.body.querySelector("tbody");
      for (const item of items) tbody.append(row(kind, item));
      this.rows += items.length;
      this.cursor = data?.next_cursor ?? null;
      if (!this.rows) this.body.append(el("p", `no ${kind} match`, "muted nodata"));
      const noun = this.rows === 1 ? kind.slice(0, -1) : kind;
      this.count.textContent = `${this.rows} ${noun}${this.cursor === null ? "" : ", more…"}`;
      this.body.dataset.loaded = String(Date.now());
    } catch (error) {
      if (id === this.latest) this.showError(`${kind} history failed: ${error.message}`, null);
    } finally {
      if (id === this.latest) {
        this.more.disabled = this.cursor === null;
        this.more.hidden = this.cursor === null;
      }
    }
  }
}
