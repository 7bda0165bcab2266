// bf16 autocast on CUDA for a scope, across the LibTorch versions we build with.
#pragma once

#include <ATen/autocast_mode.h>

#include "runtime/torch_version.h"

namespace switchyard::runtime {

/// Whether CUDA autocast is on in this thread.
inline bool cuda_autocast_enabled() {
#if SY_TORCH_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(at::kCUDA);
#else
  return at::autocast::is_enabled();
#endif
}

/// bf16 autocast on CUDA for the scope (fp32 master weights stay as they are).
class Bf16Autocast {
 public:
  explicit Bf16Autocast(bool on) : on_(on) {
    if (!on_) return;
#if SY_TORCH_AT_LEAST(2, 4)
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
#endif
  }
  ~Bf16Autocast() {
    if (!on_) return;
#if SY_TORCH_AT_LEAST(2, 4)
    at::autocast::set_autocast_enabled(at::kCUDA, false);
#else
    at::autocast::set_enabled(false);
#endif
    at::autocast::clear_cache();
  }

 private:
  bool on_;
};

}  // namespace switchyard::runtime
