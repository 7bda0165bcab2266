// SideStream: a pool stream and events on CUDA; inline calls elsewhere.
#include "modules/side_stream.h"

#include <vector>

#include "core/build_info.h"

#if SWITCHYARD_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace switchyard::modules {

#if SWITCHYARD_WITH_CUDA

struct SideStream::Impl {
  explicit Impl(c10::DeviceIndex index)
      : main(c10::cuda::getCurrentCUDAStream(index)), side(c10::cuda::getStreamFromPool(false, index)) {}
  c10::cuda::CUDAStream main, side;
  std::vector<std::unique_ptr<at::cuda::CUDAEvent>> markers;
};

SideStream::SideStream(const torch::Device& device) {
  if (device.is_cuda()) impl_ = std::make_unique<Impl>(device.index() < 0 ? c10::cuda::current_device() : device.index());
}

SideStream::~SideStream() = default;

SideStream::Marker SideStream::mark_main() {
  if (!impl_) return -1;
  impl_->markers.push_back(std::make_unique<at::cuda::CUDAEvent>());
  impl_->markers.back()->record(impl_->main);
  return static_cast<Marker>(impl_->markers.size() - 1);
}

void SideStream::side_waits(Marker marker) {
  if (impl_) impl_->markers.at(marker)->block(impl_->side);
}

void SideStream::main_waits_side() {
  if (!impl_) return;
  at::cuda::CUDAEvent done;
  done.record(impl_->side);
  done.block(impl_->main);
}

void SideStream::run_on_side(const std::function<void()>& fn) {
  if (!impl_) return fn();
  c10::cuda::CUDAStreamGuard guard(impl_->side);
  fn();
}

void SideStream::used_on_side(const torch::Tensor& t) {
  if (impl_ && t.defined() && t.is_cuda()) t.record_stream(impl_->side.unwrap());
}

void SideStream::used_on_main(const torch::Tensor& t) {
  if (impl_ && t.defined() && t.is_cuda()) t.record_stream(impl_->main.unwrap());
}

#else

struct SideStream::Impl {};
SideStream::SideStream(const torch::Device&) {}
SideStream::~SideStream() = default;
SideStream::Marker SideStream::mark_main() { return -1; }
void SideStream::side_waits(Marker) {}
void SideStream::main_waits_side() {}
void SideStream::run_on_side(const std::function<void()>& fn) { fn(); }
void SideStream::used_on_side(const torch::Tensor&) {}
void SideStream::used_on_main(const torch::Tensor&) {}

#endif

}  // namespace switchyard::modules
