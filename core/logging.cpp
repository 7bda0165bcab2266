// Leveled, rank-prefixed logging.
#include "core/logging.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace switchyard::core {
namespace {

struct LogState {
  std::atomic<int> rank{0};
  std::atomic<int> world_size{1};
  std::atomic<int> level{static_cast<int>(LogLevel::kInfo)};
  std::atomic<bool> all_ranks{false};
  std::mutex mutex;
};

LogState& state() {
  static LogState s;
  return s;
}

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}

}  // namespace

void set_log_rank(int rank, int world_size) {
  state().rank = rank;
  state().world_size = world_size;
}
void set_log_level(LogLevel level) { state().level = static_cast<int>(level); }
void set_log_all_ranks(bool all_ranks) { state().all_ranks = all_ranks; }
int log_rank() { return state().rank; }

LogLevel parse_log_level(const std::string& name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn" || name == "warning") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  throw ConfigError("--log-level: expected debug, info, warn or error, got '" + name + "'");
}

bool log_enabled(LogLevel level) {
  auto& s = state();
  if (static_cast<int>(level) < s.level) return false;
  if (level < LogLevel::kWarn && s.rank != 0 && !s.all_ranks) return false;
  return true;
}

void log_line(LogLevel level, const std::string& message) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.world_size > 1) {
    std::fprintf(stderr, "[rank %d] %s: %s\n", s.rank.load(), level_name(level), message.c_str());
  } else {
    std::fprintf(stderr, "%s: %s\n", level_name(level), message.c_str());
  }
  std::fflush(stderr);
}

}  // namespace switchyard::core
