// The operator's console: one Socket.IO connection (the vendored socket.io-client) in the
// operators room, the state bus for engine, positions, open orders and risk limits, and REST for
// the rest. Plain ES modules, nothing to build, nothing from a CDN.
import { io } from "../vendor/socket.io-client@4.8.4/socket.io.esm.min.js";
import { Charts } from "./charts.js";
import { Feed } from "./feed.js";
import { Health } from "./health.js";
import { renderAnalyses } from "./analyses.js";
import { OrderHistory } from "./history.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "hean.token";
const RESULT_WAIT_MS = 60000;
const statusClass = (status) => ({ HEALTHY: "good", RUNNING: "good", DEGRADED: "warn", STOPPED: "warn" })[status] || "bad";
// randomUUID exists only in secure contexts (https, localhost): not on http://<LAN address>.
const newId = () => (window.crypto && crypto.randomUUID) ? crypto.randomUUID()
  : Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
const el = (tag, text, css) => {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (css) node.className = css;
  return node;
};
// Decimals arrive as exact strings ("10000.00000000"): shown without the trailing zeros.
const trim = (text) => (/^-?\d+\.\d+$/.test(text) ? text.replace(/\.?0+$/, "") : text);
const fmt = (value) => (value === null || value === undefined ? "–" : trim(String(value)));

// -- sign-in ------------------------------------------------------------------------------------
// The token comes from the URL fragment (never sent to the server by the browser) or the sign-in
// form, and is kept in sessionStorage: this tab only, gone when it closes.
function takeToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);  // out of the address bar
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function askToken(reason) {
  $("signin-reason").textContent = reason;
  if (!$("signin").open) $("signin").showModal();
  $("token-input").focus();
}

// -- connection ---------------------------------------------------------------------------------
const socket = io({
  autoConnect: false,
  transports: ["websocket"],
  auth: (cb) => cb({ token: sessionStorage.getItem(TOKEN_KEY) || "", operator: true }),
  reconnectionDelay: 300,
  reconnectionDelayMax: 3000,
});
const connEl = $("conn");
const controls = () => document.querySelectorAll(
  "button[data-command], #risk-form button, #ticket button, #market button, #state-form button, #open-orders button");

function setConn(css, text) {
  connEl.className = css;
  connEl.textContent = text;
  const connected = text === "connected";
  controls().forEach((button) => { button.disabled = !connected; });
}

const stateHandlers = new Map();  // "namespace/key" -> Set of handlers
const latestState = new Map();  // "namespace/key" -> its last state_update
function onState(namespace, key, handler) {
  const id = `${namespace}/${key}`;
  if (!stateHandlers.has(id)) stateHandlers.set(id, new Set());
  stateHandlers.get(id).add(handler);
  // the server sends the value once per connection: a second reader of a key gets it from here
  if (latestState.has(id)) handler(latestState.get(id));
  else if (socket.connected) subscribe(namespace, key).catch(() => {});
}
function subscribe(namespace, key) {
  return socket.timeout(10000).emitWithAck("subscribe_state", { namespace, key });
}

socket.on("connect", () => {
  connection.connects += 1;
  setConn("good", "connected");
  $("signin").open && $("signin").close();
  // a new connection (first, or after the web process restarted) has no subscriptions yet
  for (const id of stateHandlers.keys()) {
    const [namespace, key] = id.split("/");
    subscribe(namespace, key).catch(() => {});
  }
  // commands whose ack or result did not come on an earlier connection: again, same request id
  // (the server runs a request id once; it answers the first ack, and the result when there is one)
  pending.forEach((entry) => transmit(entry));
  loadCommands();
});
socket.on("connect_error", (error) => {
  if (!socket.active) {  // refused by the server (wrong token): retrying will not help
    setConn("bad", "refused: " + error.message);
    askToken("refused: " + error.message);
  } else {
    setConn("warn", "reconnecting…");
  }
});
const connection = { connects: 0, disconnects: [] };
socket.on("disconnect", (reason) => {
  connection.disconnects.push(reason);
  setConn("warn", "reconnecting…");
  if (reason === "io server disconnect") socket.connect();  // dropped by the server: come back
});
socket.on("state_update", (update) => {
  const id = `${update.namespace}/${update.key}`;
  const handlers = stateHandlers.get(id);
  if (!handlers) return;
  latestState.set(id, update);
  if (handlers) handlers.forEach((handler) => handler(update));
});

// -- commands -----------------------------------------------------------------------------------
// Every command keeps its request id until its result comes: after a reconnect (the web process
// restarted, the network blinked) each one whose ack or result is missing is sent again with the
// same id. The server runs it once and sends its ack and result to this newest connection.
const ACK_WAIT_MS = 60000;
const waiting = new Map();  // request_id -> resolve(result) of this page's own commands
const pending = new Map();  // request_id -> {command, params, item, sends, settleAck} until its result
const feed = new Feed(document.querySelector("#feed tbody"), $("feed-counts"));
socket.on("command_result", (result) => {
  const entry = pending.get(result.request_id);
  if (entry && !entry.acked) {  // its ack went to a connection that is gone: it was accepted
    settleAck({ request_id: result.request_id, command: result.command, accepted: true, duplicate: true, ack_time_ms: 0 });
  }
  pending.delete(result.request_id);
  const resolve = waiting.get(result.request_id);
  if (resolve) { waiting.delete(result.request_id); resolve(result); }
  feed.add(result);
});
socket.on("command_ack", (ack) => settleAck(ack));

function settleAck(ack) {
  const entry = ack && pending.get(ack.request_id);
  if (!entry || entry.acked) return;  // a resend's ack: the first one was shown
  entry.acked = true;
  if (!ack.accepted) pending.delete(ack.request_id);  // refused: nothing to wait for
  entry.settleAck(ack);
}

/** Send a pending command now if connected (else the next `connect` does). */
function transmit(entry) {
  if (!socket.connected || entry.connection === connection.connects) return;  // once per connection
  entry.connection = connection.connects;
  entry.sends += 1;
  entry.item.dataset.sends = String(entry.sends);
  socket.timeout(10000).emitWithAck("command", { command: entry.command, params: entry.params, request_id: entry.requestId })
    .then(settleAck)
    .catch(() => {});  // no ack on this connection: the command_ack event, or the resend after a reconnect
}

function logEntry(command, requestId) {
  const item = el("li", undefined, "pending");
  item.dataset.command = command;
  item.dataset.requestId = requestId;
  item.append(el("span", new Date().toLocaleTimeString() + " ", "muted"), el("span", command, "cmd"),
    el("span", "sending…", "ack"), el("span", "", "result"));
  $("command-log").prepend(item);
  while ($("command-log").children.length > 50) $("command-log").lastChild.remove();
  return item;
}

function errorText(error) {
  return error ? `${error.code}: ${error.message}` : "";
}

/** Send a command; the log shows its ack, then its result or its error. Returns both. */
async function send(command, params = {}) {
  const requestId = newId();
  const item = logEntry(command, requestId);
  const resultPromise = new Promise((resolve) => {
    waiting.set(requestId, resolve);
    setTimeout(() => { if (waiting.delete(requestId)) { pending.delete(requestId); resolve(null); } }, RESULT_WAIT_MS);
  });
  const entry = { command, params, requestId, item, sends: 0, connection: 0, acked: false, settleAck: null };
  const ackPromise = new Promise((resolve) => {
    entry.settleAck = resolve;
    setTimeout(() => resolve(null), ACK_WAIT_MS);
  });
  pending.set(requestId, entry);
  transmit(entry);
  if (!socket.connected) item.querySelector(".ack").textContent = " waiting for the connection…";
  const ack = await ackPromise;
  if (ack === null) {
    pending.delete(requestId);
    waiting.delete(requestId);
    item.className = "bad";
    item.querySelector(".ack").textContent = " no ack (the server did not answer)";
    return { ack: null, result: null };
  }
  item.dataset.ack = JSON.stringify(ack);
  item.querySelector(".ack").textContent = ack.accepted
    ? ` ack ${ack.ack_time_ms} ms${ack.duplicate ? " (duplicate)" : ""}` : ` refused ${errorText(ack.error)}`;
  if (!ack.accepted) {
    waiting.delete(requestId);
    item.className = "bad";
    return { ack, result: null };
  }
  const result = await resultPromise;
  if (result === null) {
    item.className = "warn";
    item.querySelector(".result").textContent = " · no result yet (GET /api/commands/" + requestId + ")";
    return { ack, result };
  }
  item.dataset.result = JSON.stringify(result);
  item.className = result.success ? "good" : "bad";
  item.querySelector(".result").textContent = result.success
    ? ` · done ${summary(result.result)} in ${result.execution_time_ms} ms` : ` · ${errorText(result.error)}`;
  return { ack, result };
}

function summary(body) {
  if (!body || typeof body !== "object") return fmt(body);
  if (body.state) return body.state;
  if (body.order) return `${body.order.status} ${body.order.client_order_id}`;
  if (body.changed) return "changed " + [].concat(body.changed).join(", ");
  return "";
}

/** Show an error at its form field (`params.max_leverage` -> the input named max_leverage). */
function showFieldError(form, error) {
  form.querySelectorAll(".field-error").forEach((node) => { node.textContent = ""; });
  form.querySelectorAll("input.invalid").forEach((node) => node.classList.remove("invalid"));
  if (!error) return null;
  const name = (error.field || "").replace(/^params\./, "").split(".")[0];
  const input = name && form.querySelector(`[name="${CSS.escape(name)}"]`);
  if (!input) return null;
  input.classList.add("invalid");
  let slot = form.querySelector(`.field-error[data-for="${CSS.escape(name)}"]`);
  if (!slot) {
    slot = el("span", "", "field-error");
    slot.dataset.for = name;
    input.after(slot);
  }
  slot.textContent = error.message;
  return slot;
}

// -- engine -------------------------------------------------------------------------------------
const ACCOUNT_FIELDS = [
  ["equity", "equity"], ["realized_pnl", "realized PnL"], ["unrealized_pnl", "unrealized PnL"],
  ["fees", "fees"], ["drawdown_pct", "drawdown %"], ["daily_drawdown_pct", "daily drawdown %"],
  ["leverage", "leverage"], ["gross_exposure", "exposure"], ["open_orders", "open orders"],
  ["open_positions", "open positions"],
];
const COUNTERS = [["orders_submitted", "submitted"], ["orders_filled", "filled"], ["orders_rejected", "rejected"],
  ["fills", "fills"], ["cancels", "cancels"]];

onState("system", "engine", (update) => {
  const engine = update.value;
  if (!engine) return;
  const state = engine.state + (engine.paused ? " (paused)" : "");
  for (const node of [$("engine-state"), $("engine-badge")]) {
    node.textContent = node.id === "engine-badge" ? "engine " + state : state;
    node.className = "badge " + (engine.paused ? "warn" : statusClass(engine.state));
    node.dataset.state = engine.state;
  }
  $("engine-version").textContent = `v${update.version}` + (engine.halt_reason ? ` · halted: ${engine.halt_reason}` : "");
  const account = engine.account || {};
  const rows = [...ACCOUNT_FIELDS.map(([key, label]) => [key, label, account[key]]),
    ...COUNTERS.map(([key, label]) => [key, label, engine[key]])];
  $("account").replaceChildren(...rows.map(([key, label, value]) => {
    const div = el("div");
    div.dataset.field = key;
    div.append(el("dt", label), el("dd", fmt(value)));
    return div;
  }));
  if (account.equity !== undefined) charts.addEquity(update.timestamp, account.equity);
});

document.querySelectorAll("button[data-command]").forEach((button) => {
  if (button.id === "kill") return;
  button.addEventListener("click", () => send(button.dataset.command));
});
$("kill").addEventListener("click", () => $("kill-dialog").showModal());
$("kill-cancel").addEventListener("click", () => $("kill-dialog").close("cancel"));
$("kill-form").addEventListener("submit", (event) => {
  event.preventDefault();
  $("kill-dialog").close("confirm");
  send("kill_switch", { reason: $("kill-reason").value.trim() || "operator kill switch" });
});

// -- risk limits --------------------------------------------------------------------------------
let riskLimits = {};

/** [lower, lowerInclusive, upper, upperInclusive, integer] of a JSON schema, through anyOf. */
function bounds(schema) {
  for (const option of [schema, ...(schema.anyOf || []), ...(schema.oneOf || [])]) {
    if (option !== schema && (option.anyOf || option.oneOf)) {
      const inner = bounds(option);
      if (inner) return inner;
    }
    if (option.type === "number" || option.type === "integer") {
      const lower = option.exclusiveMinimum ?? option.minimum;
      const upper = option.exclusiveMaximum ?? option.maximum;
      return [lower, option.exclusiveMinimum === undefined, upper, option.exclusiveMaximum === undefined,
        option.type === "integer"];
    }
  }
  return null;
}

// Bounds as a person writes them: 10,000,000,000 and 0.1, never 1e+21 or 1E+3 (a fixed locale,
// so the form reads the same on every machine).
const boundFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 8 });
const bound = (value, none) => (value === undefined ? none : boundFormat.format(value));

function renderRiskForm(schema) {
  const holder = $("risk-fields");
  holder.replaceChildren();
  for (const [name, property] of Object.entries(schema.properties || {})) {
    const b = bounds(property) || [];
    const label = el("label", name.replaceAll("_", " "));
    const input = el("input");
    input.name = name;
    input.inputMode = "decimal";
    if (b[0] !== undefined) input.min = b[0];
    if (b[2] !== undefined) input.max = b[2];
    input.value = fmt(riskLimits[name] ?? "");
    input.dataset.current = input.value;
    const range = `${bound(b[0], "−∞")} ${b[1] ? "≤" : "<"} x ${b[3] ? "≤" : "<"} ${bound(b[2], "∞")}${b[4] ? ", whole" : ""}`;
    label.append(input, el("span", range, "bounds muted"));
    holder.append(label);
  }
}

onState("system", "risk_limits", (update) => {
  riskLimits = update.value || {};
  document.querySelectorAll("#risk-fields input").forEach((input) => {
    const current = riskLimits[input.name] === undefined ? "" : fmt(riskLimits[input.name]);
    if (input.value === input.dataset.current) input.value = current;  // not being edited
    input.dataset.current = current;
  });
});

async function loadCommands() {
  const { result } = await send("list_commands");
  const risk = result?.result?.commands?.find((c) => c.name === "risk_adjust");
  if (risk) renderRiskForm(risk.params);
}

$("risk-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const changes = {};
  form.querySelectorAll("#risk-fields input").forEach((input) => {
    if (input.value.trim() !== String(input.dataset.current)) changes[input.name] = input.value.trim();
  });
  showFieldError(form, null);
  if (!Object.keys(changes).length) { $("risk-status").textContent = "nothing changed"; return; }
  $("risk-status").textContent = "sending…";
  const { ack, result } = await send("risk_adjust", changes);
  const error = ack && !ack.accepted ? ack.error : result && !result.success ? result.error : null;
  if (error) {
    const slot = showFieldError(form, error);
    $("risk-status").textContent = slot ? "not applied: see the field" : "not applied: " + errorText(error);
    $("risk-status").className = "bad";
  } else if (result) {
    $("risk-status").textContent = "applied: " + result.result.changed.join(", ");
    $("risk-status").className = "good";
  }
});

// -- orders -------------------------------------------------------------------------------------
const ticket = $("ticket");
ticket.order_type.addEventListener("change", () => {
  const limit = ticket.order_type.value === "LIMIT";
  ticket.price.disabled = !limit;
  ticket.price.placeholder = limit ? "limit price" : "market";
  if (!limit) ticket.price.value = "";
});
ticket.addEventListener("submit", async (event) => {
  event.preventDefault();
  const params = {
    client_order_id: "ui-" + newId().replaceAll("-", "").slice(0, 20),
    symbol: ticket.symbol.value.trim(), side: ticket.side.value, quantity: ticket.quantity.value.trim(),
    order_type: ticket.order_type.value, time_in_force: ticket.time_in_force.value,
  };
  if (params.order_type === "LIMIT") params.price = ticket.price.value.trim();
  showFieldError(ticket, null);
  $("ticket-result").textContent = "sending " + params.client_order_id + "…";
  const { ack, result } = await send("submit_order", params);
  const error = ack && !ack.accepted ? ack.error : result && !result.success ? result.error : null;
  const out = $("ticket-result");
  out.dataset.clientOrderId = params.client_order_id;
  if (error) {
    showFieldError(ticket, error);
    out.className = "bad";
    out.textContent = `${params.client_order_id}: ${errorText(error)}`;
  } else if (result) {
    const order = result.result.order;
    out.className = order.status === "REJECTED" ? "bad" : "good";
    out.dataset.status = order.status;
    out.textContent = `${order.client_order_id}: ${order.status} ${fmt(order.filled_quantity)}`
      + (order.fill_price ? ` @ ${fmt(order.fill_price)}` : "") + ` (fee ${fmt(order.fee)})`;
  }
});

const market = $("market");
market.addEventListener("submit", async (event) => {
  event.preventDefault();
  const params = Object.fromEntries(["symbol", "bid", "ask", "last"].map((n) => [n, market[n].value.trim()]));
  showFieldError(market, null);
  const { ack, result } = await send("update_market", params);
  const error = ack && !ack.accepted ? ack.error : result && !result.success ? result.error : null;
  if (error) showFieldError(market, error);
  $("market-result").className = error ? "bad" : "good";
  $("market-result").textContent = error ? errorText(error) : result ? `${result.result.fills.length} fills` : "";
});

onState("system", "open_orders", (update) => {
  const value = update.value || { orders: [], total: 0 };
  $("open-orders-count").textContent = value.total > value.orders.length
    ? `${value.orders.length} of ${value.total} shown` : `${value.total}`;
  $("open-orders").tBodies[0].replaceChildren(...value.orders.map((order) => {
    const tr = el("tr");
    tr.dataset.clientOrderId = order.client_order_id;
    for (const text of [order.client_order_id, order.symbol, order.side, order.quantity, order.price]) {
      tr.append(el("td", fmt(text)));
    }
    const cancel = el("button", "cancel", "small");
    cancel.disabled = !socket.connected;
    cancel.addEventListener("click", () => send("cancel_order", { client_order_id: order.client_order_id }));
    tr.append(el("td"));
    tr.lastChild.append(cancel);
    return tr;
  }));
});

onState("system", "positions", (update) => {
  $("positions").tBodies[0].replaceChildren(...(update.value || []).map((p) => {
    const tr = el("tr");
    tr.dataset.symbol = p.symbol;
    for (const [text, css] of [[p.symbol], [p.quantity], [p.average_entry_price], [p.last_price],
      [p.realized_pnl, Number(p.realized_pnl) < 0 ? "bad" : ""], [p.unrealized_pnl, Number(p.unrealized_pnl) < 0 ? "bad" : ""],
      [p.fees]]) {
      tr.append(el("td", fmt(text), css));
    }
    return tr;
  }));
});

// -- state viewer -------------------------------------------------------------------------------
const watched = new Set();
$("state-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const namespace = form.namespace.value.trim() || "default";
  const key = form.key.value.trim();
  const id = `${namespace}/${key}`;
  $("state-error").textContent = "";
  if (watched.has(id)) return;
  watched.add(id);
  const box = el("div", undefined, "watch");
  box.dataset.watch = id;
  const head = el("header");
  const version = el("span", "no value yet", "badge");
  const close = el("button", "unsubscribe", "small");
  head.append(el("strong", id), version, close);
  const versions = el("div", "", "versions");
  const pre = el("pre", "");
  box.append(head, versions, pre);
  const history = [];
  const handler = (update) => {
    version.textContent = `v${update.version}`;
    box.dataset.version = update.version;
    history.unshift(`v${update.version} ${new Date(update.timestamp * 1000).toLocaleTimeString()}`);
    history.length = Math.min(history.length, 8);
    versions.textContent = history.join(" · ");
    pre.textContent = JSON.stringify(update.value, null, 2);
  };
  // registered before subscribing: the server may send the first value before its reply
  const known = stateHandlers.has(id);
  if (!known) stateHandlers.set(id, new Set());
  stateHandlers.get(id).add(handler);
  if (latestState.has(id)) handler(latestState.get(id));
  let reply;
  try {
    reply = await subscribe(namespace, key);
  } catch (error) {
    reply = { subscribed: false, error: { code: "timeout", message: error.message } };
  }
  if (!reply.subscribed) {
    stateHandlers.get(id).delete(handler);
    if (!known) stateHandlers.delete(id);
    watched.delete(id);
    $("state-error").textContent = errorText(reply.error);
    return;
  }
  $("state-watches").prepend(box);
  close.addEventListener("click", () => {
    stateHandlers.get(id)?.delete(handler);
    if (!stateHandlers.get(id)?.size) {
      stateHandlers.delete(id);
      latestState.delete(id);
      socket.emit("unsubscribe_state", { namespace, key });
    }
    watched.delete(id);
    box.remove();
  });
});

// -- order history (history.js) and analyses: REST, with the token --------------------------------
async function getJson(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + (sessionStorage.getItem(TOKEN_KEY) || "") } });
  if (response.status === 404) return { missing: true };
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return { data: await response.json() };
}

const orderHistory = new OrderHistory($("history"), () => sessionStorage.getItem(TOKEN_KEY) || "");

async function loadAnalyses() {
  const body = $("analyses-body");
  try {
    const { missing, data } = await getJson("/api/analyses");
    body.dataset.available = missing ? "false" : "true";
    if (missing) {
      body.replaceChildren(el("p", "not available: this server has no error analyses (/api/analyses)", "muted"));
      return;
    }
    renderAnalyses(body, data);
    body.dataset.loaded = String(Date.now());
  } catch (error) {
    body.replaceChildren(el("p", "analyses failed: " + error.message, "bad"));
  }
}
$("analyses-refresh").addEventListener("click", () => loadAnalyses());

// -- start --------------------------------------------------------------------------------------
const health = new Health();
const charts = new Charts(feed);
socket.on("health_pulse", (pulse) => { health.pulse(pulse); charts.addPulse(pulse); });

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  $("signin").close();
  setConn("warn", "connecting…");
  socket.connect();
  orderHistory.load();
});
$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  socket.disconnect();
  setConn("bad", "signed out");
  askToken("");
});

window.heanConsole = { socket, feed, health, charts, send, connection, pending, orderHistory };
if (takeToken()) {
  socket.connect();
} else {
  setConn("bad", "refused: no token (sign in, or open the URL `hean up` prints, with #token=…)");
  askToken("no token yet: sign in, or open the URL `hean up` prints (…/#token=…)");
}
orderHistory.load();
loadAnalyses();
setInterval(() => { if (socket.connected) { loadAnalyses(); } }, 30000);
