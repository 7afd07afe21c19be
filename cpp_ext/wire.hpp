// The engine worker's wire formats on the orders hot path, without Python: reading an amount
// sent as plain decimal text into fixed-point units, and writing a batch's per-order results
// as the JSON the Python layer used to build (hean.engine.BatchResult.to_dict, encoded by
// orjson). tests/test_engine_columns.py holds both equal to the Python code they replace.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "engine.hpp"

namespace hean {

// `text` as fixed-point units when it is plain ASCII decimal text with 1 to 19 whole digits
// and at most 8 decimal places ("0.001", "50000", "7.5") and fits in int64: what
// hean.engine.text_units computes by integer arithmetic. False for anything else (the caller
// takes the general path, which decides and names the error); `out` is then unspecified.
bool plain_decimal_units(std::string_view text, i64& out) noexcept;

// `utf8` as a JSON string (quoted), escaped as orjson escapes it: '"' and '\\', the control
// characters below 0x20 (\b \t \n \f \r by name, the rest as \u00xx), everything else as is.
void append_json_string(std::string& out, std::string_view utf8);

// The fixed-point text of hean.engine.units_text: sign, whole part, '.', 8 decimal places.
void append_units_text(std::string& out, i64 units);

// Orders in the engine log's binary form (a batch the engine accepted, so every id and symbol
// is at most 64 bytes): "HCOLS1", the count (uint32), then per order side, order type and time
// in force (a byte each), quantity and price (int64), the client id and the symbol (a length
// byte, then the bytes). Integers little-endian. About a third of the orders' JSON, written
// and read without a Python object per order.
void append_orders_binary(std::string& out, const std::vector<OrderRequest>& orders);

// The orders of `data` (their ids and symbols are views into it); throws InvalidInput when
// `data` is not exactly that form.
std::vector<OrderRequest> read_orders_binary(std::string_view data);

// Order `i` of a batch as JSON: the object OrderResult.to_dict() gives, keys in its order
// (client_order_id, order_id, status, reject_reason, filled_quantity, fill_price, fee,
// duplicate), compact, as orjson writes it.
void append_result_json(std::string& out, const BatchOutcome& batch, std::size_t i,
                        std::string_view client_order_id);

}  // namespace hean
