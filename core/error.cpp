// Error exit codes and the out-of-line part of SY_ASSERT.
#include "core/error.h"

namespace switchyard {

int exit_code_for(const std::exception& e) noexcept {
  if (dynamic_cast<const ConfigError*>(&e) || dynamic_cast<const UsageError*>(&e) ||
      dynamic_cast<const DataError*>(&e) || dynamic_cast<const CheckpointError*>(&e)) {
    return 2;
  }
  return 1;
}

namespace detail {

void throw_internal(const char* expr, const char* file, int line, const std::string& msg) {
  throw InternalError(concat("internal error (a bug in Switchyard): ", expr, " failed at ", file, ":",
                             line, msg.empty() ? "" : ": ", msg));
}

}  // namespace detail
}  // namespace switchyard
