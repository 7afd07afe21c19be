#include "order_json.hpp"

#include <cstring>

#include "wire.hpp"

namespace hean {

namespace {

constexpr int kMaxDepth = 64;

constexpr std::string_view kSides[] = {"BUY", "SELL"};
constexpr std::string_view kTypes[] = {"MARKET", "LIMIT"};
constexpr std::string_view kTifs[] = {"GTC", "IOC"};

// The index of a Text value among `names`, `absent` when the value is absent, -1 otherwise.
template <std::size_t N>
int code_of(const ParamValue& value, const std::string_view (&names)[N], int absent) noexcept {
  if (value.kind == ParamValue::Kind::Absent) return absent;
  if (value.kind != ParamValue::Kind::Text) return -1;
  for (std::size_t k = 0; k < N; ++k) {
    if (value.text == names[k]) return static_cast<int>(k);
  }
  return -1;
}

bool hex_digit(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool digit(char c) noexcept { return c >= '0' && c <= '9'; }

// A strict JSON reader over text (RFC 8259). Every method leaves the position after what it
// read and returns false on anything that is not what it reads.
class Reader {
 public:
  explicit Reader(std::string_view text) noexcept
      : begin_(text.data()), p_(text.data()), end_(text.data() + text.size()) {}

  void skip_space() noexcept {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  bool peek(char c) noexcept {
    skip_space();
    return p_ < end_ && *p_ == c;
  }
  bool eat(char c) noexcept {
    if (!peek(c)) return false;
    ++p_;
    return true;
  }
  bool at_end() noexcept {
    skip_space();
    return p_ == end_;
  }
  std::size_t offset() const noexcept { return static_cast<std::size_t>(p_ - begin_); }

  // A string: its raw bytes between the quotes; `escaped` when it has an escape, `ascii`
  // when every byte is printable ASCII.
  bool string(std::string_view& raw, bool& escaped, bool& ascii) noexcept {
    if (!eat('"')) return false;
    const char* start = p_;
    escaped = false;
    ascii = true;
    while (p_ < end_) {
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        raw = std::string_view(start, static_cast<std::size_t>(p_ - start));
        ++p_;
        return true;
      }
      if (c < 0x20) return false;  // control characters must be escaped
      if (c == '\\') {
        escaped = true;
        if (++p_ == end_) return false;
        if (*p_ == 'u') {
          for (int k = 0; k < 4; ++k) {
            if (++p_ == end_ || !hex_digit(*p_)) return false;
          }
        } else if (std::strchr("\"\\/bfnrt", *p_) == nullptr || *p_ == '\0') {
          return false;
        }
      } else if (c > 0x7e) {
        ascii = false;
      }
      ++p_;
    }
    return false;
  }

  // A string without escapes; `ascii` as above.
  bool plain_string(std::string_view& raw, bool& ascii) noexcept {
    bool escaped = false;
    return string(raw, escaped, ascii) && !escaped;
  }

  bool number() noexcept {
    skip_space();
    if (p_ < end_ && *p_ == '-') ++p_;
    if (p_ == end_ || !digit(*p_)) return false;
    if (*p_ == '0') {
      ++p_;
    } else {
      while (p_ < end_ && digit(*p_)) ++p_;
    }
    if (p_ < end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !digit(*p_)) return false;
      while (p_ < end_ && digit(*p_)) ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || !digit(*p_)) return false;
      while (p_ < end_ && digit(*p_)) ++p_;
    }
    return true;
  }

  bool literal(std::string_view word) noexcept {
    skip_space();
    if (static_cast<std::size_t>(end_ - p_) < word.size() ||
        std::memcmp(p_, word.data(), word.size()) != 0) {
      return false;
    }
    p_ += word.size();
    return true;
  }

  // Any value, at most `depth` arrays or objects deep.
  bool value(int depth) noexcept {
    skip_space();
    if (p_ == end_) return false;
    switch (*p_) {
      case '"': {
        std::string_view raw;
        bool escaped = false, ascii = true;
        return string(raw, escaped, ascii);
      }
      case '[':
        return depth > 0 && array(depth - 1);
      case '{':
        return depth > 0 && object(depth - 1);
      case 't':
        return literal("true");
      case 'f':
        return literal("false");
      case 'n':
        return literal("null");
      default:
        return number();
    }
  }

  bool array(int depth) noexcept {
    if (!eat('[')) return false;
    if (eat(']')) return true;
    do {
      if (!value(depth)) return false;
    } while (eat(','));
    return eat(']');
  }

  bool object(int depth) noexcept {
    if (!eat('{')) return false;
    if (eat('}')) return true;
    do {
      std::string_view key;
      bool escaped = false, ascii = true;
      if (!string(key, escaped, ascii) || !eat(':') || !value(depth)) return false;
    } while (eat(','));
    return eat('}');
  }

 private:
  const char* begin_;
  const char* p_;
  const char* end_;
};

// Reads one order object of read_orders_json.
bool order_object(Reader& r, OrderRequest& out) {
  if (!r.eat('{')) return false;
  OrderParamValues v;
  if (!r.eat('}')) {
    do {
      std::string_view key, text;
      bool ascii = true;
      if (!r.plain_string(key, ascii) || !ascii || !r.eat(':')) return false;
      ParamValue value;
      if (r.peek('"')) {
        if (!r.plain_string(text, ascii) || !ascii) return false;
        value = ParamValue{ParamValue::Kind::Text, text};
      } else if (r.literal("null")) {
        value = ParamValue{ParamValue::Kind::Null, {}};
      } else {
        return false;
      }
      if (key == "client_order_id") {
        v.client_order_id = value;
      } else if (key == "symbol") {
        v.symbol = value;
      } else if (key == "side") {
        v.side = value;
      } else if (key == "order_type") {
        v.order_type = value;
      } else if (key == "time_in_force") {
        v.time_in_force = value;
      } else if (key == "quantity") {
        v.quantity = value;
      } else if (key == "price") {
        v.price = value;
      }
    } while (r.eat(','));
    if (!r.eat('}')) return false;
  }
  return plain_order(v, out);
}

// The cutter's walk. `stripped` gets the body with each cut list replaced by null.
class Cutter {
 public:
  Cutter(std::string_view body, std::string& stripped, std::vector<OrderListCut>& cuts)
      : body_(body), r_(body), stripped_(stripped), cuts_(cuts) {}

  bool run() {
    stripped_.clear();
    cuts_.clear();
    // [ [ [envelope, ...], more args... ], kwargs, embed ]
    if (!r_.eat('[') || !r_.eat('[') || !r_.peek('[')) return false;
    if (!envelopes() || !rest_of_array(kMaxDepth - 2) || !rest_of_array(kMaxDepth - 1) ||
        !r_.at_end() || cuts_.empty()) {
      return false;
    }
    stripped_.append(body_.substr(copied_));
    return true;
  }

 private:
  // After an array's first element: the others and the closing bracket.
  bool rest_of_array(int depth) {
    while (r_.eat(',')) {
      if (!r_.value(depth)) return false;
    }
    return r_.eat(']');
  }

  bool envelopes() {
    r_.eat('[');
    if (r_.eat(']')) return true;
    std::size_t index = 0;
    do {
      const bool ok = r_.peek('{') ? envelope(index) : r_.value(kMaxDepth - 3);
      if (!ok) return false;
      ++index;
    } while (r_.eat(','));
    return r_.eat(']');
  }

  // A member name without escapes (a name with one could spell "command", "params" or
  // "orders": the general reader decides those).
  bool name(std::string_view& key) {
    bool ascii = true;
    return r_.plain_string(key, ascii) && r_.eat(':');
  }

  bool envelope(std::size_t index) {
    const int depth = kMaxDepth - 4;
    r_.eat('{');
    if (r_.eat('}')) return true;
    int commands = 0, params = 0;
    bool submit_orders = false;
    do {
      std::string_view key;
      if (!name(key)) return false;
      if (key == "command") {
        ++commands;
        if (r_.peek('"')) {
          std::string_view command;
          bool escaped = false, ascii = true;
          if (!r_.string(command, escaped, ascii)) return false;
          submit_orders = !escaped && command == "submit_orders";
        } else if (!r_.value(depth)) {
          return false;
        }
      } else if (key == "params") {
        ++params;
        const bool cut = commands == 1 && submit_orders && r_.peek('{');
        if (!(cut ? params_object(index, depth) : r_.value(depth))) return false;
      } else if (!r_.value(depth)) {
        return false;
      }
    } while (r_.eat(','));
    return commands <= 1 && params <= 1 && r_.eat('}');
  }

  bool params_object(std::size_t index, int depth) {
    r_.eat('{');
    if (r_.eat('}')) return true;
    int orders = 0;
    do {
      std::string_view key;
      if (!name(key)) return false;
      if (key == "orders") {
        ++orders;
        if (r_.peek('[')) {
          const std::size_t begin = r_.offset();
          if (!r_.value(depth - 1)) return false;
          const std::size_t end = r_.offset();
          cuts_.push_back(OrderListCut{index, begin, end});
          stripped_.append(body_.substr(copied_, begin - copied_));
          stripped_.append("null");
          copied_ = end;
          continue;
        }
      }
      if (!r_.value(depth - 1)) return false;
    } while (r_.eat(','));
    return orders <= 1 && r_.eat('}');
  }

  std::string_view body_;
  Reader r_;
  std::string& stripped_;
  std::vector<OrderListCut>& cuts_;
  std::size_t copied_ = 0;
};

}  // namespace

bool plain_order(const OrderParamValues& v, OrderRequest& out) noexcept {
  const int type = code_of(v.order_type, kTypes, 0);
  const int tif = code_of(v.time_in_force, kTifs, 0);
  const int side = code_of(v.side, kSides, -1);
  if (type < 0 || tif < 0 || side < 0) return false;
  out.type = static_cast<OrderType>(type);
  out.tif = static_cast<TimeInForce>(tif);
  out.side = static_cast<Side>(side);
  const bool priced = v.price.kind != ParamValue::Kind::Absent && v.price.kind != ParamValue::Kind::Null;
  if (priced != (out.type == OrderType::Limit)) return false;
  out.price = 0;
  if (priced && !(v.price.kind == ParamValue::Kind::Text && plain_decimal_units(v.price.text, out.price))) {
    return false;
  }
  if (v.quantity.kind != ParamValue::Kind::Text || !plain_decimal_units(v.quantity.text, out.quantity)) {
    return false;
  }
  if (v.client_order_id.kind != ParamValue::Kind::Text || v.symbol.kind != ParamValue::Kind::Text) {
    return false;
  }
  out.client_id = v.client_order_id.text;
  out.symbol = v.symbol.text;
  return true;
}

bool read_orders_json(std::string_view json, std::vector<OrderRequest>& out) {
  out.clear();
  Reader r(json);
  if (!r.eat('[')) return false;
  if (!r.eat(']')) {
    do {
      OrderRequest order;
      if (!order_object(r, order)) return false;
      out.push_back(order);
    } while (r.eat(','));
    if (!r.eat(']')) return false;
  }
  return r.at_end();
}

bool cut_order_lists(std::string_view body, std::string& stripped, std::vector<OrderListCut>& cuts) {
  return Cutter(body, stripped, cuts).run();
}

}  // namespace hean
