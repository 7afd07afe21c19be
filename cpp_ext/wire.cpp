#include "wire.hpp"

#include <cstdint>
#include <limits>

namespace hean {

bool plain_decimal_units(std::string_view text, i64& out) noexcept {
  const std::size_t dot = text.find('.');
  const std::string_view whole = text.substr(0, dot);
  const std::string_view frac =
      dot == std::string_view::npos ? std::string_view() : text.substr(dot + 1);
  if (whole.empty() || whole.size() > 19) return false;
  if (dot != std::string_view::npos && (frac.empty() || frac.size() > 8)) return false;
  u128 value = 0;  // 19 digits times 1e8 stays far below 2^128
  for (const char c : whole) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  u128 fraction = 0;
  for (std::size_t k = 0; k < 8; ++k) {
    unsigned digit = 0;
    if (k < frac.size()) {
      const char c = frac[k];
      if (c < '0' || c > '9') return false;
      digit = static_cast<unsigned>(c - '0');
    }
    fraction = fraction * 10 + digit;
  }
  const u128 units = value * static_cast<u128>(kScale) + fraction;
  if (units > static_cast<u128>(std::numeric_limits<i64>::max())) return false;
  out = static_cast<i64>(units);
  return true;
}

void append_json_string(std::string& out, std::string_view utf8) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  std::size_t run = 0;  // start of the bytes not yet copied
  for (std::size_t i = 0; i < utf8.size(); ++i) {
    const auto c = static_cast<unsigned char>(utf8[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(utf8, run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        out += "\\u00";
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 0xF]);
    }
  }
  out.append(utf8, run, utf8.size() - run);
  out.push_back('"');
}

namespace {

// Decimal digits of `v` appended (no sign).
void append_digits(std::string& out, u64 v) {
  char buf[20];
  std::size_t n = 0;
  do {
    buf[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n != 0) out.push_back(buf[--n]);
}

}  // namespace

void append_units_text(std::string& out, i64 units) {
  // |units| in unsigned arithmetic: INT64_MIN has no positive int64
  const u64 magnitude = units < 0 ? 0 - static_cast<u64>(units) : static_cast<u64>(units);
  if (units < 0) out.push_back('-');
  append_digits(out, magnitude / static_cast<u64>(kScale));
  out.push_back('.');
  u64 frac = magnitude % static_cast<u64>(kScale);
  char buf[8];
  for (std::size_t k = 8; k-- > 0;) {
    buf[k] = static_cast<char>('0' + frac % 10);
    frac /= 10;
  }
  out.append(buf, 8);
}

void append_result_json(std::string& out, const BatchOutcome& batch, std::size_t i,
                        std::string_view client_order_id) {
  out += "{\"client_order_id\":";
  append_json_string(out, client_order_id);
  out += ",\"order_id\":";
  append_digits(out, batch.order_id[i]);
  out += ",\"status\":\"";
  out += to_string(static_cast<OrderStatus>(batch.status[i]));
  out += "\",\"reject_reason\":";
  const auto reason = static_cast<RejectReason>(batch.reason[i]);
  if (reason == RejectReason::None) {
    out += "null";
  } else {
    out.push_back('"');
    out += to_string(reason);
    out.push_back('"');
  }
  out += ",\"filled_quantity\":\"";
  append_units_text(out, batch.filled_qty[i]);
  out += "\",\"fill_price\":";
  if (batch.fill_price[i] == 0) {
    out += "null";
  } else {
    out.push_back('"');
    append_units_text(out, batch.fill_price[i]);
    out.push_back('"');
  }
  out += ",\"fee\":\"";
  append_units_text(out, batch.fee[i]);
  out += "\",\"duplicate\":";
  out += batch.duplicate[i] != 0 ? "true}" : "false}";
}

namespace {

constexpr std::string_view kBinaryMagic = "HCOLS1";

void put_le(std::string& out, u64 v, int bytes) {
  for (int k = 0; k < bytes; ++k) out.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
}

void put_text(std::string& out, std::string_view text) {
  if (text.size() > 255) throw InvalidInput("columns: a client id or symbol over 255 bytes");
  out.push_back(static_cast<char>(text.size()));
  out.append(text);
}

// Reads `data` front to back; every read checks that the bytes are there.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}
  u64 le(std::size_t bytes) {
    need(bytes);
    u64 v = 0;
    for (std::size_t k = 0; k < bytes; ++k) {
      v |= static_cast<u64>(static_cast<unsigned char>(data_[pos_ + k])) << (8 * k);
    }
    pos_ += bytes;
    return v;
  }
  std::string_view text() {
    const std::size_t n = le(1);
    need(n);
    const std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  std::string_view take(std::size_t n) {
    need(n);
    const std::string_view out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  std::size_t left() const { return data_.size() - pos_; }

 private:
  void need(std::size_t n) const {
    if (data_.size() - pos_ < n) throw InvalidInput("columns: truncated");
  }
  std::string_view data_;
  std::size_t pos_ = 0;
};

}  // namespace

void append_orders_binary(std::string& out, const std::vector<OrderRequest>& orders) {
  out.append(kBinaryMagic);
  put_le(out, orders.size(), 4);
  for (const OrderRequest& o : orders) {
    out.push_back(static_cast<char>(o.side));
    out.push_back(static_cast<char>(o.type));
    out.push_back(static_cast<char>(o.tif));
    put_le(out, static_cast<u64>(o.quantity), 8);
    put_le(out, static_cast<u64>(o.price), 8);
    put_text(out, o.client_id);
    put_text(out, o.symbol);
  }
}

std::vector<OrderRequest> read_orders_binary(std::string_view data) {
  Reader in(data);
  if (in.take(kBinaryMagic.size()) != kBinaryMagic) throw InvalidInput("columns: not HCOLS1 data");
  const u64 n = in.le(4);
  if (n > in.left() / 21) throw InvalidInput("columns: truncated");  // 21 bytes per order at least
  std::vector<OrderRequest> orders(static_cast<std::size_t>(n));
  for (OrderRequest& o : orders) {
    const u64 side = in.le(1), type = in.le(1), tif = in.le(1);
    if (side > 1 || type > 1 || tif > 1) throw InvalidInput("columns: bad order code");
    o.side = static_cast<Side>(side);
    o.type = static_cast<OrderType>(type);
    o.tif = static_cast<TimeInForce>(tif);
    o.quantity = static_cast<i64>(in.le(8));
    o.price = static_cast<i64>(in.le(8));
    o.client_id = in.text();
    o.symbol = in.text();
  }
  if (in.left() != 0) throw InvalidInput("columns: trailing bytes");
  return orders;
}

}  // namespace hean
