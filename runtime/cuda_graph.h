// CUDA graphs for a host-bound step: capture a piece of work once, replay it with one launch.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace switchyard::runtime {

/// A piece of work that could not be captured into a CUDA graph (its one-line reason).
class CaptureError : public std::runtime_error {
 public:
  explicit CaptureError(const std::string& reason) : std::runtime_error(reason) {}
};

/// Whether the current CUDA stream is being captured into a graph (work there is recorded, not run:
/// nothing in it may wait on the host or read device values on the host). False without CUDA.
bool cuda_capturing();

/// While alive, the thread's work on `device` goes to a stream of its own (graphs are captured on a
/// stream other than the default one). The device is synchronized when it starts and ends, so work
/// before and after is ordered with it. Nothing on a CPU device.
class OwnStream {
 public:
  explicit OwnStream(const torch::Device& device);
  ~OwnStream();
  OwnStream(const OwnStream&) = delete;
  OwnStream& operator=(const OwnStream&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// One CUDA graph of the work `fn` issues on the current stream (which must not be the default one:
/// see OwnStream). Allocations made during capture come from the graph's own memory pool and stay
/// valid for replays, at the same addresses.
class CudaGraph {
 public:
  CudaGraph();
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  /// Records `fn` (nothing runs), after returning the allocator's cached blocks to the device (the
  /// graph's pool takes its own). Throws CaptureError with the reason when the work cannot be captured
  /// (a host wait, a device value read on the host, any exception from `fn`); no graph is kept then.
  void capture(const std::function<void()>& fn);
  /// Runs the captured work on the current stream.
  void replay();
  bool captured() const { return captured_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool captured_ = false;
};

}  // namespace switchyard::runtime
