// Bounded idempotency window: the outcomes of the most recent `capacity` distinct client
// order ids, FIFO eviction. Open addressing (linear probing, backward-shift deletion) over
// a ring of entries that hold their keys inline (at most MaxKey bytes), so memory is
// allocated once and stays flat however many orders pass, and an insert allocates nothing
// (a std::string per entry reallocated whenever a longer id replaced a shorter one: a fifth of
// the core's instructions per order in a 100-order batch).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace hean {

template <typename Value, std::size_t MaxKey>
class IdempotencyCache {
 public:
  explicit IdempotencyCache(std::size_t capacity) : capacity_(capacity) {
    std::size_t n = 16;
    while (n < capacity * 2) n <<= 1;
    slots_.assign(n, Slot{});
    mask_ = n - 1;
  }

  static std::uint64_t hash(std::string_view key) noexcept {
    return std::hash<std::string_view>{}(key);
  }

  const Value* find(std::string_view key, std::uint64_t h) const noexcept {
    const auto tag = static_cast<std::uint32_t>(h);
    for (std::size_t i = tag & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.entry == 0) return nullptr;
      if (s.tag == tag && ring_[s.entry - 1].key() == key) return &ring_[s.entry - 1].value;
    }
  }

  // `key` (at most MaxKey bytes, else std::length_error) must not be present; evicts the
  // oldest entry when full.
  void insert(std::string_view key, std::uint64_t h, const Value& value) {
    if (key.size() > MaxKey) throw std::length_error("idempotency key longer than its bound");
    std::size_t index;
    if (ring_.size() < capacity_) {
      index = ring_.size();
      ring_.emplace_back();
    } else {
      index = head_;
      erase_slot(ring_[index].tag, index);
      head_ = (head_ + 1) % capacity_;
    }
    Entry& e = ring_[index];
    std::memcpy(e.bytes.data(), key.data(), key.size());
    e.length = static_cast<std::uint8_t>(key.size());
    e.tag = static_cast<std::uint32_t>(h);
    e.value = value;
    const auto tag = static_cast<std::uint32_t>(h);
    std::size_t i = tag & mask_;
    while (slots_[i].entry != 0) i = (i + 1) & mask_;
    slots_[i] = Slot{static_cast<std::uint32_t>(index + 1), tag};
  }

  std::size_t size() const noexcept { return ring_.size(); }
  std::size_t capacity() const noexcept { return capacity_; }

  template <typename F>
  void for_each_oldest_first(F&& f) const {
    const std::size_t n = ring_.size();
    const std::size_t start = n < capacity_ ? 0 : head_;
    for (std::size_t k = 0; k < n; ++k) {
      const Entry& e = ring_[(start + k) % n];
      f(e.key(), e.value);
    }
  }

 private:
  struct Slot {
    std::uint32_t entry = 0;  // ring index + 1; 0 = empty
    std::uint32_t tag = 0;    // low 32 bits of the key's hash (home slot and filter)
  };
  static_assert(MaxKey <= 255, "an entry's key length is one byte");
  struct Entry {
    std::array<char, MaxKey> bytes{};
    std::uint8_t length = 0;
    std::uint32_t tag = 0;
    Value value{};
    std::string_view key() const noexcept { return std::string_view(bytes.data(), length); }
  };

  void erase_slot(std::uint32_t tag, std::size_t index) noexcept {
    std::size_t i = tag & mask_;
    while (slots_[i].entry != index + 1) i = (i + 1) & mask_;
    // Backward-shift deletion keeps every probe chain intact without tombstones.
    for (std::size_t j = (i + 1) & mask_; slots_[j].entry != 0; j = (j + 1) & mask_) {
      const std::size_t home = slots_[j].tag & mask_;
      if (((j - home) & mask_) >= ((j - i) & mask_)) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = Slot{};
  }

  std::size_t capacity_;
  std::size_t mask_ = 0;
  std::size_t head_ = 0;  // oldest entry once the ring is full
  std::vector<Slot> slots_;
  std::vector<Entry> ring_;
};

}  // namespace hean
