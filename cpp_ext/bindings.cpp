// pybind11 bindings: exposes the C++ core (engine.hpp, graph.hpp) as hean._core.
//
// Batch entry points copy their columns out of Python objects while holding the GIL, then
// release it for the engine call; results come back as compact byte columns.
#include <pybind11/operators.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine.hpp"
#include "graph.hpp"
#include "order_json.hpp"
#include "wire.hpp"

namespace py = pybind11;

namespace {

using hean::i64;

// A column of Python str copied into one buffer; views are taken once it is complete.
struct StringColumn {
  std::string storage;
  std::vector<std::size_t> offsets;  // n + 1 entries
  std::vector<std::uint32_t> index;  // per row: which distinct value (dedupe mode)
  std::size_t rows = 0;

  std::string_view at(std::size_t i) const {
    return std::string_view(storage).substr(offsets[i], offsets[i + 1] - offsets[i]);
  }
};

class FastSequence {
 public:
  FastSequence(py::handle obj, const char* field) {
    seq_ = PySequence_Fast(obj.ptr(), field);
    if (seq_ == nullptr) {
      PyErr_Clear();
      throw py::type_error(std::string(field) + ": must be a sequence");
    }
  }
  ~FastSequence() { Py_XDECREF(seq_); }
  FastSequence(const FastSequence&) = delete;
  FastSequence& operator=(const FastSequence&) = delete;
  std::size_t size() const { return static_cast<std::size_t>(PySequence_Fast_GET_SIZE(seq_)); }
  PyObject* item(std::size_t i) const {
    return PySequence_Fast_GET_ITEM(seq_, static_cast<Py_ssize_t>(i));
  }

 private:
  PyObject* seq_ = nullptr;
};

// Reads a sequence of str. With dedupe, rows that are the same Python object share a value
// (symbols in a batch are usually the same few interned strings).
StringColumn read_strings(py::handle obj, const char* field, bool dedupe) {
  FastSequence seq(obj, field);
  StringColumn col;
  col.rows = seq.size();
  col.offsets.push_back(0);
  std::unordered_map<PyObject*, std::uint32_t> known;
  PyObject* last = nullptr;
  std::uint32_t last_index = 0;
  if (dedupe) col.index.reserve(col.rows);
  for (std::size_t i = 0; i < col.rows; ++i) {
    PyObject* item = seq.item(i);
    if (dedupe) {
      if (item == last) {
        col.index.push_back(last_index);
        continue;
      }
      auto it = known.find(item);
      if (it != known.end()) {
        last = item;
        last_index = it->second;
        col.index.push_back(last_index);
        continue;
      }
    }
    if (!PyUnicode_Check(item)) {
      throw py::type_error(std::string(field) + ": item " + std::to_string(i) + " must be str");
    }
    Py_ssize_t len = 0;
    const char* p = PyUnicode_AsUTF8AndSize(item, &len);
    if (p == nullptr) throw py::error_already_set();
    col.storage.append(p, static_cast<std::size_t>(len));
    col.offsets.push_back(col.storage.size());
    if (dedupe) {
      last = item;
      last_index = static_cast<std::uint32_t>(col.offsets.size() - 2);
      known.emplace(item, last_index);
      col.index.push_back(last_index);
    }
  }
  return col;
}

bool format_matches(const std::string& format, std::size_t itemsize, std::size_t want) {
  if (itemsize != want || format.empty()) return false;
  const char kind = format.back();  // skip byte-order prefixes such as '<' or '='
  return std::strchr("bBhHiIlLqQ", kind) != nullptr;
}

// Reads an integer column from a buffer (array.array, bytes, numpy, memoryview) of the
// right item size, or from any sequence of ints.
template <typename T>
std::vector<T> read_ints(py::handle obj, const char* field, std::size_t rows) {
  std::vector<T> out;
  if (PyObject_CheckBuffer(obj.ptr()) && !PyUnicode_Check(obj.ptr())) {
    py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
    py::buffer_info info = buf.request();
    if (info.ndim != 1 || !format_matches(info.format, static_cast<std::size_t>(info.itemsize),
                                          sizeof(T))) {
      throw py::type_error(std::string(field) + ": buffer must be 1-D with " +
                           std::to_string(sizeof(T)) + "-byte integers");
    }
    if (static_cast<std::size_t>(info.size) != rows) {
      throw py::value_error(std::string(field) + ": length " + std::to_string(info.size) +
                            " differs from " + std::to_string(rows) + " orders");
    }
    if (info.strides[0] != static_cast<py::ssize_t>(sizeof(T))) {
      throw py::type_error(std::string(field) + ": buffer must be contiguous");
    }
    out.resize(rows);
    if (rows != 0) std::memcpy(out.data(), info.ptr, rows * sizeof(T));
    return out;
  }
  FastSequence seq(obj, field);
  if (seq.size() != rows) {
    throw py::value_error(std::string(field) + ": length " + std::to_string(seq.size()) +
                          " differs from " + std::to_string(rows) + " orders");
  }
  out.resize(rows);
  for (std::size_t i = 0; i < rows; ++i) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(seq.item(i), &overflow);
    if (v == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      throw py::type_error(std::string(field) + ": item " + std::to_string(i) +
                           " must be an int");
    }
    const bool below = v < static_cast<long long>(std::numeric_limits<T>::min());
    const bool above = v > 0 && static_cast<unsigned long long>(v) >
                                    static_cast<unsigned long long>(std::numeric_limits<T>::max());
    if (overflow != 0 || below || above) {
      throw py::value_error(std::string(field) + ": item " + std::to_string(i) +
                            " out of range");
    }
    out[i] = static_cast<T>(v);
  }
  return out;
}

template <typename T>
py::bytes column_bytes(const std::vector<T>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// A batch's outcome with its orders' client ids (UTF-8, one buffer), so that its per-order
// results can be written as JSON without a Python object per order.
struct BatchResult : hean::BatchOutcome {
  std::string ids;
  std::vector<std::size_t> id_offsets;  // count + 1 entries

  BatchResult(hean::BatchOutcome&& outcome, std::string&& id_storage,
              std::vector<std::size_t>&& offsets)
      : hean::BatchOutcome(std::move(outcome)),
        ids(std::move(id_storage)),
        id_offsets(std::move(offsets)) {}

  std::string_view id(std::size_t i) const {
    return std::string_view(ids).substr(id_offsets[i], id_offsets[i + 1] - id_offsets[i]);
  }
  std::size_t checked(py::ssize_t i) const {
    const auto n = static_cast<py::ssize_t>(status.size());
    if (i < 0) i += n;
    if (i < 0 || i >= n) throw py::index_error("order index out of range");
    return static_cast<std::size_t>(i);
  }
};

py::str utf8_str(std::string_view text) {
  return py::reinterpret_steal<py::str>(
      PyUnicode_DecodeUTF8(text.data(), static_cast<py::ssize_t>(text.size()), "strict"));
}

// Orders read from the JSON params of `submit_order` commands, as columns. Client ids and
// symbols are copied into one buffer; the views into it are made once it is complete.
struct OrderColumns {
  std::string text;
  std::vector<std::size_t> id_at, id_len, symbol_at, symbol_len;
  std::vector<hean::OrderRequest> orders;

  // A copy of `orders` whose ids and symbols may point anywhere.
  static std::unique_ptr<OrderColumns> copy_of(const std::vector<hean::OrderRequest>& orders) {
    auto c = std::make_unique<OrderColumns>();
    c->orders = orders;
    for (hean::OrderRequest& o : c->orders) {
      c->id_at.push_back(c->text.size());
      c->id_len.push_back(o.client_id.size());
      c->text.append(o.client_id);
      c->symbol_at.push_back(c->text.size());
      c->symbol_len.push_back(o.symbol.size());
      c->text.append(o.symbol);
      o.client_id = o.symbol = std::string_view();  // views are made by requests()
    }
    return c;
  }

  std::vector<hean::OrderRequest> requests() const {
    std::vector<hean::OrderRequest> out = orders;
    const std::string_view all(text);
    for (std::size_t i = 0; i < out.size(); ++i) {
      out[i].client_id = all.substr(id_at[i], id_len[i]);
      out[i].symbol = all.substr(symbol_at[i], symbol_len[i]);
    }
    return out;
  }
};

// Keys of an order's params, made once (interned, so dict lookups compare pointers first).
struct ParamKeys {
  PyObject* client_order_id = PyUnicode_InternFromString("client_order_id");
  PyObject* symbol = PyUnicode_InternFromString("symbol");
  PyObject* side = PyUnicode_InternFromString("side");
  PyObject* quantity = PyUnicode_InternFromString("quantity");
  PyObject* order_type = PyUnicode_InternFromString("order_type");
  PyObject* price = PyUnicode_InternFromString("price");
  PyObject* time_in_force = PyUnicode_InternFromString("time_in_force");
};

const ParamKeys& param_keys() {
  static const ParamKeys* keys = new ParamKeys();  // lives as long as the interpreter
  return *keys;
}

// The value of `key` in `params`; nullptr when absent. Borrowed.
PyObject* param(PyObject* params, PyObject* key) {
  PyObject* value = PyDict_GetItemWithError(params, key);
  if (value == nullptr && PyErr_Occurred()) throw py::error_already_set();
  return value;
}

// `value` (nullptr when absent) as the plain form sees it: a str is Text when it has UTF-8
// (no lone surrogates) and is exactly a str, or any str for `any_str` (ids and symbols).
hean::ParamValue param_value(PyObject* value, bool any_str = false) {
  using Kind = hean::ParamValue::Kind;
  if (value == nullptr) return {Kind::Absent, {}};
  if (value == Py_None) return {Kind::Null, {}};
  if (any_str ? PyUnicode_Check(value) : PyUnicode_CheckExact(value)) {
    Py_ssize_t len = 0;
    const char* p = PyUnicode_AsUTF8AndSize(value, &len);
    if (p != nullptr) return {Kind::Text, std::string_view(p, static_cast<std::size_t>(len))};
    PyErr_Clear();
  }
  return {Kind::Other, {}};
}

// Columns of `n` orders; `read(i, request)` fills request i (views that live until the
// columns are complete) or refuses the lot.
template <typename Read>
py::object order_columns(std::size_t n, Read&& read) {
  auto columns = std::make_unique<OrderColumns>();
  OrderColumns& c = *columns;
  c.orders.resize(n);
  for (auto* v : {&c.id_at, &c.id_len, &c.symbol_at, &c.symbol_len}) v->resize(n);
  c.text.reserve(n * 24);
  for (std::size_t i = 0; i < n; ++i) {
    hean::OrderRequest& o = c.orders[i];
    if (!read(i, o)) return py::none();
    c.id_at[i] = c.text.size();
    c.id_len[i] = o.client_id.size();
    c.text.append(o.client_id);
    c.symbol_at[i] = c.text.size();
    c.symbol_len[i] = o.symbol.size();
    c.text.append(o.symbol);
    o.client_id = o.symbol = std::string_view();  // views are made by requests()
  }
  return py::cast(std::move(columns));
}

// The columns of `orders` (a list of the JSON params of `submit_order` commands that passed
// the edge's schema), or None when any order is not in the plain form the edge sends
// (hean::plain_order): then hean.engine.OrderBatch.append_params reads them, and names the
// error of one it refuses. Accepts exactly what append_params accepts in that form, with the
// same values; bounds are checked by the engine when the batch is applied, as for every batch.
py::object read_order_params(py::handle orders) {
  if (!PyList_Check(orders.ptr())) return py::none();
  const ParamKeys& keys = param_keys();
  const auto n = static_cast<std::size_t>(PyList_GET_SIZE(orders.ptr()));
  return order_columns(n, [&](std::size_t i, hean::OrderRequest& o) {
    PyObject* params = PyList_GET_ITEM(orders.ptr(), static_cast<Py_ssize_t>(i));
    if (!PyDict_CheckExact(params)) return false;
    hean::OrderParamValues v;
    v.order_type = param_value(param(params, keys.order_type));
    v.time_in_force = param_value(param(params, keys.time_in_force));
    v.side = param_value(param(params, keys.side));
    v.price = param_value(param(params, keys.price));
    v.quantity = param_value(param(params, keys.quantity));
    v.client_order_id = param_value(param(params, keys.client_order_id), true);
    v.symbol = param_value(param(params, keys.symbol), true);
    return hean::plain_order(v, o);
  });
}

// The columns of the orders in `json` (hean::read_orders_json), or None.
py::object read_order_json(const py::bytes& json) {
  const std::string_view text(json);
  std::vector<hean::OrderRequest> read;
  if (!hean::read_orders_json(text, read)) return py::none();
  return order_columns(read.size(), [&](std::size_t i, hean::OrderRequest& o) {
    o = read[i];
    return true;
  });
}

// hean::cut_order_lists of a body given as str: (the stripped body, [(envelope index, the
// list's JSON), ...]), or None.
py::object cut_order_lists(py::handle body) {
  if (!PyUnicode_Check(body.ptr())) return py::none();
  Py_ssize_t len = 0;
  const char* p = PyUnicode_AsUTF8AndSize(body.ptr(), &len);
  if (p == nullptr) {  // lone surrogates: the general reader
    PyErr_Clear();
    return py::none();
  }
  const std::string_view text(p, static_cast<std::size_t>(len));
  std::string stripped;
  std::vector<hean::OrderListCut> cuts;
  if (!hean::cut_order_lists(text, stripped, cuts)) return py::none();
  py::list lists;
  for (const hean::OrderListCut& cut : cuts) {
    lists.append(py::make_tuple(cut.envelope, py::bytes(text.data() + cut.begin, cut.end - cut.begin)));
  }
  return py::make_tuple(py::bytes(stripped), lists);
}

BatchResult submit_columns(hean::Engine& engine, const OrderColumns& columns, hean::i64 now_ns) {
  std::string ids;
  std::vector<std::size_t> offsets;
  offsets.reserve(columns.orders.size() + 1);
  offsets.push_back(0);
  for (std::size_t i = 0; i < columns.orders.size(); ++i) {
    ids.append(columns.text, columns.id_at[i], columns.id_len[i]);
    offsets.push_back(ids.size());
  }
  const std::vector<hean::OrderRequest> orders = columns.requests();
  hean::BatchOutcome outcome;
  {
    py::gil_scoped_release release;
    outcome = engine.submit_batch(orders, now_ns);
  }
  return BatchResult(std::move(outcome), std::move(ids), std::move(offsets));
}

// Rows [first, last) of a result as JSON objects, appended to `out` with commas between.
void append_rows(std::string& out, const BatchResult& r, std::size_t first, std::size_t last) {
  for (std::size_t i = first; i < last; ++i) {
    if (i != first) out.push_back(',');
    hean::append_result_json(out, r, i, r.id(i));
  }
}

BatchResult submit_batch(hean::Engine& engine, py::handle client_ids, py::handle symbols,
                                py::handle sides, py::handle order_types,
                                py::handle quantities, py::handle prices,
                                py::handle time_in_force, i64 now_ns) {
  StringColumn ids = read_strings(client_ids, "client_order_ids", false);
  const StringColumn syms = read_strings(symbols, "symbols", true);
  const std::size_t n = ids.rows;
  if (syms.rows != n) {
    throw py::value_error("symbols: length " + std::to_string(syms.rows) + " differs from " +
                          std::to_string(n) + " orders");
  }
  const auto side = read_ints<std::uint8_t>(sides, "sides", n);
  const auto type = read_ints<std::uint8_t>(order_types, "order_types", n);
  const auto qty = read_ints<i64>(quantities, "quantities", n);
  const auto price = read_ints<i64>(prices, "prices", n);
  const auto tif = read_ints<std::uint8_t>(time_in_force, "time_in_force", n);
  std::vector<hean::OrderRequest> orders(n);
  for (std::size_t i = 0; i < n; ++i) {
    hean::OrderRequest& o = orders[i];
    o.client_id = ids.at(i);
    o.symbol = syms.at(syms.index[i]);
    o.side = static_cast<hean::Side>(side[i]);
    o.type = static_cast<hean::OrderType>(type[i]);
    o.tif = static_cast<hean::TimeInForce>(tif[i]);
    o.quantity = qty[i];
    o.price = price[i];
  }
  hean::BatchOutcome outcome;
  {
    py::gil_scoped_release release;
    outcome = engine.submit_batch(orders, now_ns);
  }
  return BatchResult(std::move(outcome), std::move(ids.storage), std::move(ids.offsets));
}

std::vector<hean::Fill> update_market_batch(hean::Engine& engine, py::handle symbols,
                                            py::handle bids, py::handle asks, py::handle lasts) {
  const StringColumn syms = read_strings(symbols, "symbols", true);
  const std::size_t n = syms.rows;
  const auto bid = read_ints<i64>(bids, "bids", n);
  const auto ask = read_ints<i64>(asks, "asks", n);
  const auto last = read_ints<i64>(lasts, "lasts", n);
  std::vector<hean::MarketUpdate> updates(n);
  for (std::size_t i = 0; i < n; ++i) {
    updates[i] = hean::MarketUpdate{syms.at(syms.index[i]), bid[i], ask[i], last[i]};
  }
  py::gil_scoped_release release;
  return engine.update_market_batch(updates);
}

hean::OrderResult submit_order(hean::Engine& engine, const std::string& client_id,
                               const std::string& symbol, hean::Side side,
                               hean::OrderType type, i64 quantity, i64 price,
                               hean::TimeInForce tif, i64 now_ns) {
  hean::OrderRequest req{client_id, symbol, side, type, tif, quantity, price};
  py::gil_scoped_release release;
  return engine.submit(req, now_ns);
}

// The typed Python layer's fast path: integer codes in, a plain tuple out (pybind11 enum
// objects cost more than the engine call itself).
py::tuple submit_order_codes(hean::Engine& engine, const std::string& client_id,
                             const std::string& symbol, int side, int type, i64 quantity,
                             i64 price, int tif, i64 now_ns) {
  auto code = [](int v, const char* field) {
    if (v < 0 || v > 255) throw py::value_error(std::string(field) + ": bad code");
    return static_cast<std::uint8_t>(v);
  };
  hean::OrderRequest req{client_id,
                         symbol,
                         static_cast<hean::Side>(code(side, "side")),
                         static_cast<hean::OrderType>(code(type, "order_type")),
                         static_cast<hean::TimeInForce>(code(tif, "time_in_force")),
                         quantity,
                         price};
  hean::OrderResult r;
  {
    py::gil_scoped_release release;
    r = engine.submit(req, now_ns);
  }
  return py::make_tuple(r.order_id, static_cast<int>(r.status), static_cast<int>(r.reason),
                        r.filled_qty, r.fill_price, r.fee, r.duplicate);
}

std::unique_ptr<hean::Engine> make_engine(i64 starting_equity, i64 idempotency_capacity) {
  hean::EngineConfig config;
  config.starting_equity = starting_equity;
  config.idempotency_capacity = idempotency_capacity;
  return std::make_unique<hean::Engine>(config);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "HEAN C++ trading core: order engine (fixed point, 1e-8 units) and price graph";
  m.attr("SCALE") = hean::kScale;
  m.attr("MAX_PRICE") = hean::kMaxPrice;
  m.attr("MAX_QUANTITY") = hean::kMaxQuantity;
  m.attr("MAX_CASH") = hean::kMaxCash;
  m.def(
      "bounds",
      [] {
        // name -> {kind, min, min_exclusive, max}: the table the core validates against
        py::dict out;
        auto add = [&out](const hean::Bound& b) {
          const char* kind = b.kind == hean::BoundKind::FixedPoint ? "fixed_point"
                             : b.kind == hean::BoundKind::Integer  ? "integer"
                                                                   : "length";
          out[b.name] = py::dict(py::arg("kind") = kind, py::arg("min") = b.min,
                                 py::arg("min_exclusive") = b.min_exclusive,
                                 py::arg("max") = b.max);
        };
        for (const auto& b : hean::kRiskLimitBounds) add(b);
        for (const auto& b : hean::kOrderBounds) add(b);
        return out;
      },
      "Every risk limit's and order field's bounds, as the core checks them (values in "
      "1e-8 units for fixed_point, counts for integer, bytes for length).");

  py::enum_<hean::EngineState>(m, "EngineState")
      .value("STOPPED", hean::EngineState::Stopped)
      .value("RUNNING", hean::EngineState::Running)
      .value("HALTED", hean::EngineState::Halted);
  py::enum_<hean::Side>(m, "Side").value("BUY", hean::Side::Buy).value("SELL", hean::Side::Sell);
  py::enum_<hean::OrderType>(m, "OrderType")
      .value("MARKET", hean::OrderType::Market)
      .value("LIMIT", hean::OrderType::Limit);
  py::enum_<hean::TimeInForce>(m, "TimeInForce")
      .value("GTC", hean::TimeInForce::GTC)
      .value("IOC", hean::TimeInForce::IOC);
  py::enum_<hean::OrderStatus>(m, "OrderStatus")
      .value("FILLED", hean::OrderStatus::Filled)
      .value("RESTING", hean::OrderStatus::Resting)
      .value("EXPIRED", hean::OrderStatus::Expired)
      .value("REJECTED", hean::OrderStatus::Rejected)
      .value("CANCELLED", hean::OrderStatus::Cancelled);
  py::enum_<hean::RejectReason> reasons(m, "RejectReason");
  for (int i = 0; i < hean::kRejectReasonCount; ++i) {
    const auto r = static_cast<hean::RejectReason>(i);
    reasons.value(hean::to_string(r), r);
  }

  py::class_<hean::RiskLimits>(m, "RiskLimits")
      .def(py::init<>())
      .def_readwrite("min_notional", &hean::RiskLimits::min_notional)
      .def_readwrite("max_notional", &hean::RiskLimits::max_notional)
      .def_readwrite("max_open_orders", &hean::RiskLimits::max_open_orders)
      .def_readwrite("max_open_positions", &hean::RiskLimits::max_open_positions)
      .def_readwrite("max_leverage", &hean::RiskLimits::max_leverage)
      .def_readwrite("max_trade_risk_pct", &hean::RiskLimits::max_trade_risk_pct)
      .def_readwrite("stop_distance_pct", &hean::RiskLimits::stop_distance_pct)
      .def_readwrite("max_daily_drawdown_pct", &hean::RiskLimits::max_daily_drawdown_pct)
      .def_readwrite("kill_switch_drawdown_pct", &hean::RiskLimits::kill_switch_drawdown_pct)
      .def_readwrite("max_orders_per_second", &hean::RiskLimits::max_orders_per_second)
      .def_readwrite("fee_rate", &hean::RiskLimits::fee_rate)
      .def("validate", &hean::RiskLimits::validate)
      .def(py::self == py::self);

  py::class_<hean::OrderResult>(m, "OrderResult")
      .def_readonly("order_id", &hean::OrderResult::order_id)
      .def_readonly("status", &hean::OrderResult::status)
      .def_readonly("reason", &hean::OrderResult::reason)
      .def_readonly("filled_qty", &hean::OrderResult::filled_qty)
      .def_readonly("fill_price", &hean::OrderResult::fill_price)
      .def_readonly("fee", &hean::OrderResult::fee)
      .def_readonly("duplicate", &hean::OrderResult::duplicate);

  py::class_<hean::Fill>(m, "Fill")
      .def_readonly("order_id", &hean::Fill::order_id)
      .def_readonly("client_order_id", &hean::Fill::client_id)
      .def_readonly("symbol", &hean::Fill::symbol)
      .def_readonly("side", &hean::Fill::side)
      .def_readonly("quantity", &hean::Fill::quantity)
      .def_readonly("price", &hean::Fill::price)
      .def_readonly("fee", &hean::Fill::fee);

  py::class_<hean::PositionView>(m, "Position")
      .def_readonly("symbol", &hean::PositionView::symbol)
      .def_readonly("quantity", &hean::PositionView::quantity)
      .def_readonly("cost", &hean::PositionView::cost)
      .def_readonly("avg_entry_price", &hean::PositionView::avg_entry_price)
      .def_readonly("realized_pnl", &hean::PositionView::realized_pnl)
      .def_readonly("unrealized_pnl", &hean::PositionView::unrealized_pnl)
      .def_readonly("fees", &hean::PositionView::fees)
      .def_readonly("last_price", &hean::PositionView::last_price)
      .def_readonly("bid", &hean::PositionView::bid)
      .def_readonly("ask", &hean::PositionView::ask);

  py::class_<hean::AccountView>(m, "Account")
      .def_readonly("starting_equity", &hean::AccountView::starting_equity)
      .def_readonly("equity", &hean::AccountView::equity)
      .def_readonly("realized_pnl", &hean::AccountView::realized_pnl)
      .def_readonly("unrealized_pnl", &hean::AccountView::unrealized_pnl)
      .def_readonly("fees", &hean::AccountView::fees)
      .def_readonly("gross_exposure", &hean::AccountView::gross_exposure)
      .def_readonly("open_order_notional", &hean::AccountView::open_order_notional)
      .def_readonly("peak_equity", &hean::AccountView::peak_equity)
      .def_readonly("day_start_equity", &hean::AccountView::day_start_equity)
      .def_readonly("open_orders", &hean::AccountView::open_orders)
      .def_readonly("open_positions", &hean::AccountView::open_positions);

  py::class_<hean::OpenOrderView>(m, "OpenOrder")
      .def_readonly("order_id", &hean::OpenOrderView::order_id)
      .def_readonly("client_order_id", &hean::OpenOrderView::client_id)
      .def_readonly("symbol", &hean::OpenOrderView::symbol)
      .def_readonly("side", &hean::OpenOrderView::side)
      .def_readonly("price", &hean::OpenOrderView::price)
      .def_readonly("quantity", &hean::OpenOrderView::quantity);

  py::class_<hean::EngineCounters>(m, "Counters")
      .def_readonly("orders_submitted", &hean::EngineCounters::orders_submitted)
      .def_readonly("orders_filled", &hean::EngineCounters::orders_filled)
      .def_readonly("orders_rejected", &hean::EngineCounters::orders_rejected)
      .def_readonly("duplicates", &hean::EngineCounters::duplicates)
      .def_readonly("fills", &hean::EngineCounters::fills)
      .def_readonly("cancels", &hean::EngineCounters::cancels);

  py::class_<BatchResult>(m, "BatchResult")
      .def_property_readonly("count",
                             [](const BatchResult& b) { return b.status.size(); })
      .def_readonly("filled", &hean::BatchOutcome::filled)
      .def_readonly("resting", &hean::BatchOutcome::resting)
      .def_readonly("expired", &hean::BatchOutcome::expired)
      .def_readonly("rejected", &hean::BatchOutcome::rejected)
      .def_readonly("duplicates", &hean::BatchOutcome::duplicates)
      .def_property_readonly(
          "status", [](const BatchResult& b) { return column_bytes(b.status); },
          "uint8 per order (OrderStatus values)")
      .def_property_readonly(
          "reason", [](const BatchResult& b) { return column_bytes(b.reason); },
          "uint8 per order (RejectReason values)")
      .def_property_readonly(
          "filled_qty", [](const BatchResult& b) { return column_bytes(b.filled_qty); },
          "int64 per order")
      .def_property_readonly(
          "fill_price", [](const BatchResult& b) { return column_bytes(b.fill_price); },
          "int64 per order")
      .def_property_readonly(
          "fee", [](const BatchResult& b) { return column_bytes(b.fee); },
          "int64 per order")
      .def_property_readonly(
          "order_id", [](const BatchResult& b) { return column_bytes(b.order_id); },
          "uint64 per order")
      .def_property_readonly(
          "duplicate", [](const BatchResult& b) { return column_bytes(b.duplicate); },
          "uint8 per order (1 = remembered outcome)")
      .def("client_order_id",
           [](const BatchResult& b, py::ssize_t i) { return utf8_str(b.id(b.checked(i))); },
           py::arg("i"))
      .def(
          "client_order_ids",
          [](const BatchResult& b) {
            py::list out(b.status.size());
            for (std::size_t i = 0; i < b.status.size(); ++i) {
              PyList_SET_ITEM(out.ptr(), static_cast<py::ssize_t>(i), utf8_str(b.id(i)).release().ptr());
            }
            return out;
          },
          "The orders' client ids, in input order.")
      .def(
          "results_json",
          [](const BatchResult& b) {
            std::string out;
            {
              py::gil_scoped_release release;
              out.reserve(b.status.size() * 200 + 2);
              out.push_back('[');
              append_rows(out, b, 0, b.status.size());
              out.push_back(']');
            }
            return py::bytes(out);
          },
          "Every order's result as one JSON array: the objects of OrderResult.to_dict(), "
          "compact, as orjson writes them.")
      .def(
          "result_json",
          [](const BatchResult& b, py::ssize_t i) {
            const std::size_t row = b.checked(i);
            std::string out;
            append_rows(out, b, row, row + 1);
            return py::bytes(out);
          },
          py::arg("i"), "Order i's result as a JSON object (see results_json).");

  py::class_<OrderColumns>(m, "OrderColumns",
                           "Orders read by read_order_params, as the engine takes them.")
      .def("__len__", [](const OrderColumns& c) { return c.orders.size(); })
      .def(
          "rows",
          [](const OrderColumns& c) {
            py::list out;
            for (const hean::OrderRequest& o : c.requests()) {
              out.append(py::make_tuple(utf8_str(o.client_id), utf8_str(o.symbol),
                                        static_cast<int>(o.side), static_cast<int>(o.type),
                                        static_cast<int>(o.tif), o.quantity, o.price));
            }
            return out;
          },
          "Each order as (client_order_id, symbol, side, order_type, time_in_force, "
          "quantity, price): the core's codes and units.")
      .def(
          "to_bytes",
          [](const OrderColumns& c) {
            std::string out;
            {
              py::gil_scoped_release release;
              const std::vector<hean::OrderRequest> orders = c.requests();
              out.reserve(orders.size() * 48 + 16);
              hean::append_orders_binary(out, orders);
            }
            return py::bytes(out);
          },
          "The orders in the engine log's binary form (cpp_ext/wire.hpp); ValueError for an "
          "id or symbol over 255 bytes (the engine refuses those anyway).")
      .def_static(
          "from_bytes",
          [](const py::bytes& data) {
            const std::string_view view(data);
            return OrderColumns::copy_of(hean::read_orders_binary(view));
          },
          py::arg("data"), "The orders of to_bytes(); ValueError for anything else.");
  m.def(
      "snapshot_checksum",
      [](const py::bytes& body, std::uint64_t version) {
        const auto view = static_cast<std::string_view>(body);
        return hean::snapshot_checksum(view, version);
      },
      py::arg("body"), py::arg("version"),
      "The checksum a snapshot of format `version` ends with, over `body` (all before it).");
  m.def("read_order_params", &read_order_params, py::arg("orders"),
        "The columns of a list of submit_order params in the plain form the edge sends, or "
        "None when any order is not in that form (hean.engine.OrderBatch.append_params then "
        "reads them, with its errors).");
  m.def("read_order_json", &read_order_json, py::arg("json"),
        "The columns of the orders in `json` (a JSON array of submit_order params), read as "
        "read_order_params reads them, or None when the text or any order is not in the plain "
        "form (cpp_ext/order_json.hpp): then parse it and take the general way.");
  m.def("cut_order_lists", &cut_order_lists, py::arg("body"),
        "A batch task's body (str) with each submit_orders envelope's order list replaced by "
        "null, and [(envelope index, the list's JSON bytes), ...]; None when the body is not "
        "plain enough to cut (cpp_ext/order_json.hpp): then parse it whole.");


  const auto released = py::call_guard<py::gil_scoped_release>();
  py::class_<hean::Engine>(m, "Engine")
      .def(py::init(&make_engine), py::arg("starting_equity") = 10'000 * hean::kScale,
           py::arg("idempotency_capacity") = 100'000)
      .def("start", &hean::Engine::start, py::call_guard<py::gil_scoped_release>(),
           "Move STOPPED -> RUNNING; returns False otherwise.")
      .def("stop", &hean::Engine::stop, py::call_guard<py::gil_scoped_release>(),
           "Move RUNNING -> STOPPED; returns False otherwise.")
      .def("kill_switch", &hean::Engine::kill_switch, py::arg("reason") = "command",
           py::call_guard<py::gil_scoped_release>(),
           "Move to HALTED and cancel every resting order; False if already halted.")
      .def("reset_kill_switch", &hean::Engine::reset_kill_switch,
           py::call_guard<py::gil_scoped_release>(),
           "Move HALTED -> STOPPED and reset peak equity; False if not halted.")
      .def("set_risk_limits", &hean::Engine::set_risk_limits, py::arg("limits"),
           py::call_guard<py::gil_scoped_release>())
      .def("reset_daily", &hean::Engine::reset_daily, py::call_guard<py::gil_scoped_release>())
      // Getters take the engine's lock: without the GIL, so that a thread waiting for a batch
      // to finish (the state publisher) does not hold up every other Python thread meanwhile.
      .def_property_readonly("state", py::cpp_function(&hean::Engine::state, released))
      .def_property_readonly("halt_reason", py::cpp_function(&hean::Engine::halt_reason, released))
      .def_property_readonly("command_count",
                             py::cpp_function(&hean::Engine::command_count, released))
      .def_property_readonly("risk_limits", py::cpp_function(&hean::Engine::risk_limits, released))
      .def_property_readonly("counters", py::cpp_function(&hean::Engine::counters, released))
      .def_property_readonly("starting_equity",
                             [](const hean::Engine& e) { return e.config().starting_equity; })
      .def_property_readonly(
          "idempotency_capacity",
          [](const hean::Engine& e) { return e.config().idempotency_capacity; })
      .def("submit_order", &submit_order, py::arg("client_order_id"), py::arg("symbol"),
           py::arg("side"), py::arg("order_type"), py::arg("quantity"), py::arg("price") = 0,
           py::arg("time_in_force") = hean::TimeInForce::GTC, py::arg("now_ns") = 0)
      .def("submit_order_codes", &submit_order_codes, py::arg("client_order_id"),
           py::arg("symbol"), py::arg("side"), py::arg("order_type"), py::arg("quantity"),
           py::arg("price"), py::arg("time_in_force"), py::arg("now_ns") = 0,
           "submit_order with integer codes; returns (order_id, status, reason, filled_qty, "
           "fill_price, fee, duplicate)")
      .def("submit_batch", &submit_batch, py::arg("client_order_ids"), py::arg("symbols"),
           py::arg("sides"), py::arg("order_types"), py::arg("quantities"), py::arg("prices"),
           py::arg("time_in_force"), py::arg("now_ns") = 0)
      .def("submit_columns", &submit_columns, py::arg("columns"), py::arg("now_ns") = 0,
           "submit_batch of orders read by read_order_params.")
      .def("cancel_order", &hean::Engine::cancel, py::arg("client_order_id"),
           py::call_guard<py::gil_scoped_release>())
      .def(
          "update_market",
          [](hean::Engine& e, const std::string& symbol, i64 bid, i64 ask, i64 last) {
            hean::MarketUpdate u{symbol, bid, ask, last};
            py::gil_scoped_release release;
            return e.update_market(u);
          },
          py::arg("symbol"), py::arg("bid"), py::arg("ask"), py::arg("last"))
      .def("update_market_batch", &update_market_batch, py::arg("symbols"), py::arg("bids"),
           py::arg("asks"), py::arg("lasts"))
      .def("positions", &hean::Engine::positions, py::call_guard<py::gil_scoped_release>())
      .def("account", &hean::Engine::account, py::call_guard<py::gil_scoped_release>())
      .def("open_orders", &hean::Engine::open_orders, py::call_guard<py::gil_scoped_release>())
      .def("snapshot",
           [](const hean::Engine& e) {
             std::string data;
             {
               py::gil_scoped_release release;
               data = e.snapshot();
             }
             return py::bytes(data);
           })
      .def(
          "restore",
          [](hean::Engine& e, const py::bytes& data) {
            std::string copy = data;
            py::gil_scoped_release release;
            e.restore(copy);
          },
          py::arg("data"));

  py::class_<hean::LeadLag>(m, "LeadLag")
      .def_readonly("lag", &hean::LeadLag::lag)
      .def_readonly("correlation", &hean::LeadLag::correlation)
      .def_readonly("samples", &hean::LeadLag::samples);
  py::class_<hean::LeaderScore>(m, "LeaderScore")
      .def_readonly("symbol", &hean::LeaderScore::symbol)
      .def_readonly("score", &hean::LeaderScore::score)
      .def_readonly("leads", &hean::LeaderScore::leads);

  py::class_<hean::PriceGraph>(m, "PriceGraph")
      .def(py::init<std::size_t>(), py::arg("capacity") = 4096)
      .def("add_price", &hean::PriceGraph::add_price, py::arg("symbol"), py::arg("ts"),
           py::arg("price"), py::call_guard<py::gil_scoped_release>())
      .def("add_prices", &hean::PriceGraph::add_prices, py::arg("symbol"), py::arg("ts"),
           py::arg("prices"), py::call_guard<py::gil_scoped_release>())
      .def("symbols", &hean::PriceGraph::symbols)
      .def("length", &hean::PriceGraph::length, py::arg("symbol"))
      .def("aligned_returns", &hean::PriceGraph::aligned_returns, py::arg("a"), py::arg("b"),
           py::call_guard<py::gil_scoped_release>())
      .def("correlation", &hean::PriceGraph::correlation, py::arg("a"), py::arg("b"),
           py::arg("window") = 0, py::call_guard<py::gil_scoped_release>())
      .def("lead_lag", &hean::PriceGraph::lead_lag, py::arg("a"), py::arg("b"),
           py::arg("max_lag"), py::arg("window") = 0, py::call_guard<py::gil_scoped_release>())
      .def("leaders", &hean::PriceGraph::leaders, py::arg("symbols"), py::arg("max_lag"),
           py::arg("min_abs_corr") = 0.1, py::arg("window") = 0,
           py::call_guard<py::gil_scoped_release>());
}
