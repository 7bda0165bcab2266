// The LibTorch version guard: Debian's CPU LibTorch is 1.13, the GPU machine's 2.11; code that needs
// a newer API sits under `#if SY_TORCH_AT_LEAST(major, minor)` with a path for the older one.
#pragma once

#include <torch/version.h>

#define SY_TORCH_AT_LEAST(major, minor) \
  ((TORCH_VERSION_MAJOR > (major)) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))
