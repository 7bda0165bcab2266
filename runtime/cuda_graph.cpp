// CudaGraph and OwnStream: at::cuda::CUDAGraph and a pool stream on CUDA builds; errors elsewhere.
#include "runtime/cuda_graph.h"

#include <stdexcept>
#include <string>

#include "core/build_info.h"

#if SWITCHYARD_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace switchyard::runtime {

#if SWITCHYARD_WITH_CUDA

bool cuda_capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

namespace {

/// A pool stream of device `index`, once the device has finished the work queued before.
c10::cuda::CUDAStream pool_stream_after_sync(c10::DeviceIndex index) {
  c10::cuda::device_synchronize();
  return c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

struct OwnStream::Impl {
  explicit Impl(c10::DeviceIndex index) : guard(pool_stream_after_sync(index)) {}
  ~Impl() { c10::cuda::device_synchronize(); }
  c10::cuda::CUDAStreamGuard guard;
};

OwnStream::OwnStream(const torch::Device& device) {
  if (device.is_cuda()) impl_ = std::make_unique<Impl>(device.has_index() ? device.index() : c10::cuda::current_device());
}

struct CudaGraph::Impl {
  at::cuda::CUDAGraph graph;
};

CudaGraph::CudaGraph() : impl_(std::make_unique<Impl>()) {}

void CudaGraph::capture(const std::function<void()>& fn) {
  const auto device = c10::cuda::current_device();
  c10::cuda::CUDACachingAllocator::emptyCache();
  impl_->graph.capture_begin();
  std::string failure;
  try {
    fn();
  } catch (const c10::Error& e) {
    failure = first_line(e.what_without_backtrace());
  } catch (const std::exception& e) {
    failure = first_line(e.what());
  }
  try {
    impl_->graph.capture_end();
  } catch (const c10::Error& e) {
    if (failure.empty()) failure = first_line(e.what_without_backtrace());
    // A capture CUDA refused ends before the allocator stops serving this stream from the graph's pool.
    try {
      c10::cuda::CUDACachingAllocator::endAllocateToPool(device, impl_->graph.pool());
    } catch (const c10::Error&) {
    }
  }
  if (!failure.empty()) {
    (void)cudaGetLastError();  // the refused capture's error is not the next call's
    impl_ = std::make_unique<Impl>();
    throw CaptureError(failure);
  }
  captured_ = true;
}

void CudaGraph::replay() {
  if (!captured_) throw std::logic_error("CudaGraph::replay: nothing captured");
  impl_->graph.replay();
}

#else

bool cuda_capturing() { return false; }

struct OwnStream::Impl {};
OwnStream::OwnStream(const torch::Device& device) {
  if (device.is_cuda()) throw std::runtime_error("OwnStream: this build has no CUDA");
}

struct CudaGraph::Impl {};
CudaGraph::CudaGraph() = default;
void CudaGraph::capture(const std::function<void()>&) { throw CaptureError("CUDA graphs need a CUDA build"); }
void CudaGraph::replay() { throw std::logic_error("CudaGraph::replay: nothing captured"); }

#endif

OwnStream::~OwnStream() = default;
CudaGraph::~CudaGraph() = default;

}  // namespace switchyard::runtime
