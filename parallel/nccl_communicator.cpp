// NCCL backend: grouped ncclSend/ncclRecv for all-to-all-v, unique id broadcast over the bootstrap
// communicator, subgroups with ncclCommSplit. Each wait polls a CUDA event and NCCL's async error
// against the deadline; past it the communicator is aborted and CommError thrown.
#include "core/build_info.h"
#include "core/error.h"
#include "parallel/communicator.h"

#if SWITCHYARD_HAS_NCCL
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <thread>
#endif

namespace switchyard::parallel {

#if SWITCHYARD_HAS_NCCL
namespace {

#define SY_NCCL_CHECK(rank, expr) SY_CHECK_CALL(CommError, rank, ncclSuccess, ncclGetErrorString, expr)
#define SY_CUDA_CHECK(rank, expr) SY_CHECK_CALL(CommError, rank, cudaSuccess, cudaGetErrorString, expr)

ncclDataType_t to_nccl(torch::ScalarType t, int world_rank) {
  switch (t) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kFloat16: return ncclFloat16;
    case torch::kInt64: return ncclInt64;
    case torch::kInt32: return ncclInt32;
    case torch::kUInt8: return ncclUint8;
    default: throw CommError(detail::concat("[rank ", world_rank, "] NCCL backend: unsupported dtype ", t));
  }
}

ncclRedOp_t to_nccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, int world_rank, double timeout_s)
      : comm_(comm), device_(device), world_rank_(world_rank), timeout_s_(timeout_s) {
    SY_NCCL_CHECK(world_rank_, ncclCommUserRank(comm_, &rank_));
    SY_NCCL_CHECK(world_rank_, ncclCommCount(comm_, &size_));
    c10::cuda::CUDAGuard guard(device_);
    SY_CUDA_CHECK(world_rank_, cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }
  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      // Unwinding after an error: abort (destroy may wait for peers that will never come).
      if (aborted_ || std::uncaught_exceptions() > 0) ncclCommAbort(comm_);
      else ncclCommDestroy(comm_);
    }
    cudaEventDestroy(done_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int world_rank() const override { return world_rank_; }
  std::string backend_name() const override { return "nccl"; }

  torch::Tensor all_to_all_v(const torch::Tensor& send_in, const std::vector<int64_t>& send_counts,
                             const std::vector<int64_t>& recv_counts) override {
    c10::cuda::CUDAGuard guard(device_);
    const auto send = send_in.to(torch::Device(torch::kCUDA, device_)).contiguous();
    std::vector<int64_t> shape(send.sizes().begin(), send.sizes().end());
    int64_t row_bytes = send.element_size();
    for (size_t i = 1; i < shape.size(); ++i) row_bytes *= shape[i];
    int64_t recv_rows = 0;
    for (auto c : recv_counts) recv_rows += c;
    shape[0] = recv_rows;
    auto recv = torch::empty(shape, send.options());
    auto stream = c10::cuda::getCurrentCUDAStream(device_).stream();
    const auto* s = static_cast<const char*>(send.data_ptr());
    auto* r = static_cast<char*>(recv.data_ptr());
    int64_t s_off = 0, r_off = 0;
    SY_NCCL_CHECK(world_rank_, ncclGroupStart());
    for (int p = 0; p < size_; ++p) {
      if (send_counts[p] > 0) SY_NCCL_CHECK(world_rank_, ncclSend(s + s_off, send_counts[p] * row_bytes, ncclChar, p, comm_, stream));
      if (recv_counts[p] > 0) SY_NCCL_CHECK(world_rank_, ncclRecv(r + r_off, recv_counts[p] * row_bytes, ncclChar, p, comm_, stream));
      s_off += send_counts[p] * row_bytes;
      r_off += recv_counts[p] * row_bytes;
    }
    SY_NCCL_CHECK(world_rank_, ncclGroupEnd());
    wait(stream, "all_to_all_v");
    return recv.to(send_in.device());
  }

  std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send_counts) override {
    const auto send = torch::tensor(send_counts, torch::kInt64).view({size_, 1});
    const std::vector<int64_t> ones(size_, 1);
    const auto recv = all_to_all_v(send, ones, ones).to(torch::kCPU);
    return std::vector<int64_t>(recv.data_ptr<int64_t>(), recv.data_ptr<int64_t>() + size_);
  }

  void all_reduce(torch::Tensor& tensor, ReduceOp op) override {
    c10::cuda::CUDAGuard guard(device_);
    auto buf = tensor.to(torch::Device(torch::kCUDA, device_)).contiguous();
    auto stream = c10::cuda::getCurrentCUDAStream(device_).stream();
    SY_NCCL_CHECK(world_rank_, ncclAllReduce(buf.data_ptr(), buf.data_ptr(), buf.numel(), to_nccl(buf.scalar_type(), world_rank_),
                                to_nccl(op), comm_, stream));
    wait(stream, "all_reduce");
    if (!buf.is_same(tensor)) tensor.copy_(buf);
  }

  torch::Tensor all_gather(const torch::Tensor& tensor) override {
    c10::cuda::CUDAGuard guard(device_);
    const auto send = tensor.to(torch::Device(torch::kCUDA, device_)).contiguous();
    std::vector<int64_t> shape(send.sizes().begin(), send.sizes().end());
    if (shape.empty()) shape.push_back(1);
    else shape[0] *= size_;
    auto recv = torch::empty(shape, send.options());
    auto stream = c10::cuda::getCurrentCUDAStream(device_).stream();
    SY_NCCL_CHECK(world_rank_, ncclAllGather(send.data_ptr(), recv.data_ptr(), send.numel() * send.element_size(), ncclChar, comm_,
                                stream));
    wait(stream, "all_gather");
    return recv.to(tensor.device());
  }

  void broadcast(torch::Tensor& tensor, int root) override {
    c10::cuda::CUDAGuard guard(device_);
    auto buf = tensor.to(torch::Device(torch::kCUDA, device_)).contiguous();
    auto stream = c10::cuda::getCurrentCUDAStream(device_).stream();
    SY_NCCL_CHECK(world_rank_, ncclBroadcast(buf.data_ptr(), buf.data_ptr(), buf.numel() * buf.element_size(), ncclChar, root, comm_,
                                stream));
    wait(stream, "broadcast");
    if (!buf.is_same(tensor)) tensor.copy_(buf);
  }

  void barrier() override {
    auto t = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA, device_));
    all_reduce(t, ReduceOp::kSum);
  }

  std::shared_ptr<Communicator> split(int color, int key) override {
    ncclComm_t sub = nullptr;
    SY_NCCL_CHECK(world_rank_, ncclCommSplit(comm_, color, key, &sub, nullptr));
    return std::make_shared<NcclCommunicator>(sub, device_, world_rank_, timeout_s_);
  }

 private:
  /// Waits for the stream's work, checking NCCL's async error, up to the deadline.
  void wait(cudaStream_t stream, const char* op) {
    SY_CUDA_CHECK(world_rank_, cudaEventRecord(done_, stream));
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::duration<double>(timeout_s_);
    for (;;) {
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) SY_CUDA_CHECK(world_rank_, q);
      ncclResult_t async = ncclSuccess;
      SY_NCCL_CHECK(world_rank_, ncclCommGetAsyncError(comm_, &async));
      if (async != ncclSuccess && async != ncclInProgress) {
        aborted_ = true;
        throw CommError(detail::concat("[rank ", world_rank_, "] ", op, ": NCCL error ", ncclGetErrorString(async)));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        aborted_ = true;
        throw CommError(detail::concat("[rank ", world_rank_, "] ", op, " did not complete within parallel.timeout_s = ",
                                       timeout_s_, " s (a peer rank failed or is stuck)"));
      }
      // Spin for the first millisecond (a sleep costs ~50 us of timer slack, more than a small
      // exchange takes), then yield the core.
      if (std::chrono::steady_clock::now() - start > std::chrono::milliseconds(1)) {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
  }

  ncclComm_t comm_;
  int device_;
  int world_rank_;
  double timeout_s_;
  int rank_ = 0, size_ = 1;
  bool aborted_ = false;
  cudaEvent_t done_ = nullptr;
};

}  // namespace

bool nccl_available() { return true; }

namespace {

/// A new NCCL communicator over `bootstrap`'s ranks (rank 0's unique id broadcast over it).
ncclComm_t init_nccl_comm(Communicator& bootstrap, int device_index) {
  const int world_rank = bootstrap.world_rank();
  SY_CUDA_CHECK(world_rank, cudaSetDevice(device_index));
  ncclUniqueId id;
  auto id_bytes = torch::zeros({static_cast<int64_t>(sizeof(id))}, torch::kUInt8);
  if (bootstrap.rank() == 0) {
    SY_NCCL_CHECK(world_rank, ncclGetUniqueId(&id));
    std::memcpy(id_bytes.data_ptr(), &id, sizeof(id));
  }
  bootstrap.broadcast(id_bytes, 0);
  std::memcpy(&id, id_bytes.data_ptr(), sizeof(id));
  ncclComm_t comm = nullptr;
  SY_NCCL_CHECK(world_rank, ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()));
  return comm;
}

}  // namespace

std::shared_ptr<Communicator> make_nccl_communicator(const std::shared_ptr<Communicator>& bootstrap, int device_index,
                                                     double timeout_s) {
  return std::make_shared<NcclCommunicator>(init_nccl_comm(*bootstrap, device_index), device_index,
                                            bootstrap->world_rank(), timeout_s);
}

RawAlltoall make_raw_nccl_alltoall(const std::shared_ptr<Communicator>& bootstrap, int device_index) {
  const int world_rank = bootstrap->world_rank(), size = bootstrap->size();
  std::shared_ptr<ncclComm> comm(init_nccl_comm(*bootstrap, device_index), [](ncclComm_t c) { ncclCommDestroy(c); });
  return [comm, device_index, world_rank, size](const torch::Tensor& send, torch::Tensor& recv, int64_t bytes_per_peer) {
    c10::cuda::CUDAGuard guard(device_index);
    auto stream = c10::cuda::getCurrentCUDAStream(device_index).stream();
    const auto* s = static_cast<const char*>(send.data_ptr());
    auto* r = static_cast<char*>(recv.data_ptr());
    SY_NCCL_CHECK(world_rank, ncclGroupStart());
    for (int p = 0; p < size; ++p) {
      SY_NCCL_CHECK(world_rank, ncclSend(s + p * bytes_per_peer, bytes_per_peer, ncclChar, p, comm.get(), stream));
      SY_NCCL_CHECK(world_rank, ncclRecv(r + p * bytes_per_peer, bytes_per_peer, ncclChar, p, comm.get(), stream));
    }
    SY_NCCL_CHECK(world_rank, ncclGroupEnd());
    SY_CUDA_CHECK(world_rank, cudaStreamSynchronize(stream));
  };
}

#else

bool nccl_available() { return false; }

std::shared_ptr<Communicator> make_nccl_communicator(const std::shared_ptr<Communicator>& bootstrap, int, double) {
  throw CommError(detail::concat("[rank ", bootstrap->world_rank(),
                                 "] parallel.backend: nccl is not built in (configure with -DSWITCHYARD_WITH_CUDA=ON)"));
}

RawAlltoall make_raw_nccl_alltoall(const std::shared_ptr<Communicator>& bootstrap, int) {
  throw CommError(detail::concat("[rank ", bootstrap->world_rank(), "] NCCL is not built in"));
}

#endif

}  // namespace switchyard::parallel
