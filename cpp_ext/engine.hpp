// HEAN trading core: engine state machine (grown into the order engine by later work).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>

namespace hean {

enum class EngineState : std::uint8_t { Stopped = 0, Running = 1 };

const char* to_string(EngineState state) noexcept;

// Each Engine object owns all of its state: there is no global engine.
class Engine {
 public:
  Engine() = default;

  // Both return true when the state changed, false when it already was the target.
  bool start();
  bool stop();

  EngineState state() const;
  std::uint64_t command_count() const;

 private:
  mutable std::mutex mutex_;
  EngineState state_ = EngineState::Stopped;
  std::uint64_t command_count_ = 0;
};

}  // namespace hean
