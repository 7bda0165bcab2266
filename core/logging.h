// Leveled logging to stderr with a "[rank r]" prefix; rank 0 alone prints info by default.
#pragma once

#include <string>

#include "core/error.h"

namespace switchyard::core {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

/// Process-wide logging settings, set once by main() after MPI start-up.
void set_log_rank(int rank, int world_size);
void set_log_level(LogLevel level);
/// Parses "debug|info|warn|error"; throws ConfigError naming the value otherwise.
LogLevel parse_log_level(const std::string& name);
/// Whether non-zero ranks print info and debug lines (warnings and errors always print).
void set_log_all_ranks(bool all_ranks);

int log_rank();
bool log_enabled(LogLevel level);
void log_line(LogLevel level, const std::string& message);

template <class... Args>
void log_info(const Args&... args) {
  if (log_enabled(LogLevel::kInfo)) log_line(LogLevel::kInfo, detail::concat(args...));
}
template <class... Args>
void log_warn(const Args&... args) {
  if (log_enabled(LogLevel::kWarn)) log_line(LogLevel::kWarn, detail::concat(args...));
}
template <class... Args>
void log_debug(const Args&... args) {
  if (log_enabled(LogLevel::kDebug)) log_line(LogLevel::kDebug, detail::concat(args...));
}

}  // namespace switchyard::core
