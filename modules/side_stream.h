// A side CUDA stream beside the current one, for exchanges that overlap the experts' compute (the
// MoE layer's `overlap_chunks`). For CPU devices, or in a build without CUDA, every call runs inline
// and orders nothing, so the same code path runs (and is tested) on the CPU.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>

namespace switchyard::modules {

class SideStream {
 public:
  /// The main stream is the device's current stream at construction.
  explicit SideStream(const torch::Device& device);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;

  /// A point on the main stream: the work queued on it so far.
  using Marker = int;
  Marker mark_main();
  /// Side-stream work queued from now on starts after the main stream reached `marker`.
  void side_waits(Marker marker);
  /// Main-stream work queued from now on starts after the side stream's work queued so far.
  void main_waits_side();
  /// Runs `fn` with the side stream current (autograd runs the backward of what it records there too).
  void run_on_side(const std::function<void()>& fn);
  /// A tensor made on one stream and read on the other: the caching allocator must not reuse its
  /// memory before the other stream is done with it.
  void used_on_side(const torch::Tensor& t);
  void used_on_main(const torch::Tensor& t);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace switchyard::modules
