// What a device offers a run: its memory and its peak throughput, for the memory check before a
// model is built and for the metrics (MFU, peak memory).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace switchyard::runtime {

/// Bytes a run may allocate on `device`: the card's total memory on CUDA; on the CPU, what the
/// kernel reports available (MemAvailable). -1 where unknown.
int64_t memory_capacity_bytes(const torch::Device& device);

/// Peak of allocated CUDA memory on `device` since the start, GiB; -1 on the CPU.
double peak_memory_gib(const torch::Device& device);

/// Peak dense bf16 TFLOP/s of known cards by name (H100, H200, A100); 0 otherwise and on the CPU.
double known_peak_tflops(const torch::Device& device);

}  // namespace switchyard::runtime
