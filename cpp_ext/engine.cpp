#include "engine.hpp"

namespace hean {

const char* to_string(EngineState state) noexcept {
  switch (state) {
    case EngineState::Stopped:
      return "STOPPED";
    case EngineState::Running:
      return "RUNNING";
  }
  return "UNKNOWN";
}

bool Engine::start() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++command_count_;
  if (state_ == EngineState::Running) return false;
  state_ = EngineState::Running;
  return true;
}

bool Engine::stop() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++command_count_;
  if (state_ == EngineState::Stopped) return false;
  state_ = EngineState::Stopped;
  return true;
}

EngineState Engine::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_;
}

std::uint64_t Engine::command_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return command_count_;
}

}  // namespace hean
