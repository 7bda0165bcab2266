// Device memory and peak throughput (device_info.h).
#include "runtime/device_info.h"

#include "core/build_info.h"
#if SWITCHYARD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <fstream>
#include <string>

namespace switchyard::runtime {

int64_t memory_capacity_bytes(const torch::Device& device) {
#if SWITCHYARD_WITH_CUDA
  if (device.is_cuda()) return static_cast<int64_t>(at::cuda::getDeviceProperties(device.index())->totalGlobalMem);
#endif
  if (!device.is_cpu()) return -1;
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  int64_t kib = 0;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return -1;
}

double peak_memory_gib(const torch::Device& device) {
#if SWITCHYARD_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0 * 1024.0);
  }
#else
  (void)device;
#endif
  return -1;
}

double known_peak_tflops(const torch::Device& device) {
#if SWITCHYARD_WITH_CUDA
  if (device.is_cuda()) {
    const std::string name = at::cuda::getDeviceProperties(device.index())->name;
    if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989.4;
    if (name.find("A100") != std::string::npos) return 312.0;
  }
#else
  (void)device;
#endif
  return 0;
}

}  // namespace switchyard::runtime
