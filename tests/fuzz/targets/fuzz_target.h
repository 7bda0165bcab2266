// The contract every fuzz target checks: for any input a reader either succeeds or throws one of
// Switchyard's errors (a one-line message naming the file); anything else (a crash, a sanitizer
// report, std::bad_alloc, a stray library exception, a hang) is a defect. Each target defines
// LLVMFuzzerTestOneInput; it links with libFuzzer (clang, coverage-guided: SWITCHYARD_LIBFUZZER=ON) or
// with fuzz_driver.cpp (any compiler: the seed corpus, then random mutations for a bounded time; CTest).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"

namespace switchyard::fuzz {

/// A per-process scratch directory (created on first use, removed at exit).
const std::string& scratch_dir();

/// Writes `size` bytes to scratch_dir()/name and returns the path.
std::string write_scratch(const std::string& name, const uint8_t* data, size_t size);

/// Runs `read`, accepting Switchyard's own errors (the refusal a reader owes bad input).
template <typename F>
void expect_refusal_or_success(F read) {
  try {
    read();
  } catch (const switchyard::Error&) {
  }
}

}  // namespace switchyard::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
