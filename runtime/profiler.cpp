// KinetoTrace: LibTorch's Kineto profiler from C++ (prepare, enable, disable, save).
#include "runtime/profiler.h"

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>

#include <cstdio>
#include <set>

#include "core/error.h"

namespace switchyard::runtime {

KinetoTrace::KinetoTrace(const torch::Device& device) : device_(device) {
  namespace prof = torch::profiler::impl;
  const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
  if (device.is_cuda()) activities.insert(prof::ActivityType::CUDA);
  torch::autograd::profiler::prepareProfiler(config, activities);
  torch::autograd::profiler::enableProfiler(config, activities);
  recording_ = true;
}

KinetoTrace::~KinetoTrace() {
  if (!recording_) return;
  try {
    torch::autograd::profiler::disableProfiler();
  } catch (...) {  // a destructor never throws; the trace is dropped
  }
}

void KinetoTrace::save(const std::string& path) {
  SY_CHECK(recording_, "KinetoTrace: saved twice");
  if (device_.is_cuda()) torch::cuda::synchronize(device_.index());
  recording_ = false;
  const auto result = torch::autograd::profiler::disableProfiler();
  try {
    result->save(path);
  } catch (const c10::Error& e) {
    std::remove(path.c_str());
    throw UsageError(std::string("--profile: no trace written (") + e.what_without_backtrace() + ")");
  }
}

}  // namespace switchyard::runtime
