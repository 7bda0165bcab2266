// Kineto traces for `switchyard bench layer --profile` and `switchyard train --profile`: host ops
// and, on a CUDA device, every kernel and copy, as a Chrome trace (chrome://tracing, Perfetto).
#pragma once

#include <torch/torch.h>

#include <string>

namespace switchyard::runtime {

class KinetoTrace {
 public:
  /// Starts recording on `device`'s host thread (and its CUDA kernels on a CUDA device).
  explicit KinetoTrace(const torch::Device& device);
  /// Stops recording if still on (no file written).
  ~KinetoTrace();
  KinetoTrace(const KinetoTrace&) = delete;
  KinetoTrace& operator=(const KinetoTrace&) = delete;

  /// Waits for the device, stops recording and writes the trace to `path`. UsageError (one line) when
  /// this LibTorch cannot write one (built without Kineto); no partial file is left.
  void save(const std::string& path);

 private:
  torch::Device device_;
  bool recording_ = false;
};

}  // namespace switchyard::runtime
