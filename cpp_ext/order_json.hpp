// Orders of `submit_orders` commands read straight from the JSON text of the queued batch
// message, without a Python object per order: the engine worker's hot path for 100-order
// commands (reading the orders as Python dicts, then into columns, was about a quarter of its
// CPU). Everything here answers "not in the plain form" (false) for anything unusual, and the
// caller then reads the text the general way, with its values and errors: these readers are a
// shortcut, never a second meaning. tests/test_order_json.py holds them to that.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "engine.hpp"

namespace hean {

// One value of an order's params, as far as the plain form cares.
struct ParamValue {
  enum class Kind { Absent, Null, Text, Other };
  Kind kind = Kind::Absent;
  std::string_view text;  // Kind::Text only: the string's UTF-8
};

// The params of one order that the core reads (any others are ignored).
struct OrderParamValues {
  ParamValue client_order_id, symbol, side, order_type, time_in_force, quantity, price;
};

// `values` as an order in the plain form the edge sends: side BUY or SELL; order_type MARKET
// (the default) or LIMIT; time_in_force GTC (the default) or IOC; a price (plain decimal text)
// exactly when the order is LIMIT, absent or null otherwise; the quantity as plain decimal
// text; the client order id and the symbol as text. False for anything else (the general
// reader, hean.engine.OrderBatch.append_params, decides and names the error). The request's
// id and symbol are views of the values' text.
bool plain_order(const OrderParamValues& values, OrderRequest& out) noexcept;

// The orders of `json`, a JSON array of objects, read as plain_order reads each object's
// members: true only when every member is a string of printable ASCII without escapes, or
// null, and every order is plain (a member given twice counts once, its last value, as in a
// JSON object read by Python). The requests' ids and symbols are views into `json`.
bool read_orders_json(std::string_view json, std::vector<OrderRequest>& out);

// Where a `submit_orders` order list sat in a batch task's body: the envelope's index in the
// body's envelope list, and the list's bytes [begin, end) in the body.
struct OrderListCut {
  std::size_t envelope = 0;
  std::size_t begin = 0;
  std::size_t end = 0;
};

// A batch task's body (the JSON text `[[[envelope, ...], ...], kwargs, embed]`) with the order
// list of each `submit_orders` envelope replaced by `null` (`stripped`), and where each list
// was (`cuts`). An envelope's list is cut when its "command" member, given before "params",
// is "submit_orders", and "params" is an object whose "orders" member is an array. True only
// when the whole body is valid JSON (RFC 8259, nested at most 64 deep), no envelope or params
// object gives "command", "params" or "orders" twice or any member name with an escape, and
// at least one list was cut: parsing `stripped` and each cut list then gives exactly the
// values that parsing the body gives.
bool cut_order_lists(std::string_view body, std::string& stripped, std::vector<OrderListCut>& cuts);

}  // namespace hean
