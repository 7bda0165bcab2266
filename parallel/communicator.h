// Collective communication over a group of ranks, on tensors. Backends: MpiCommunicator (CPU
// tensors; CUDA tensors staged through host memory) and NcclCommunicator (CUDA tensors).
//
// Every operation is collective: all ranks of the group call it, in the same order. Every wait is
// bounded by the communicator's timeout; past it the call throws CommError naming the operation and
// the rank, and main() ends the job on every rank.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace switchyard::parallel {

enum class ReduceOp { kSum, kMax, kMin };

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// This rank's rank in MPI_COMM_WORLD (for messages and topology).
  virtual int world_rank() const = 0;
  virtual std::string backend_name() const = 0;

  /// Sends rows of `send` ([sum(send_counts), ...], grouped by destination rank in order) and returns
  /// the received rows [sum(recv_counts), ...] grouped by source rank. Counts are in rows (dim 0).
  virtual torch::Tensor all_to_all_v(const torch::Tensor& send, const std::vector<int64_t>& send_counts,
                                     const std::vector<int64_t>& recv_counts) = 0;
  /// Exchanges one count per peer: returns what each peer sent to this rank.
  virtual std::vector<int64_t> all_to_all_counts(const std::vector<int64_t>& send_counts) = 0;
  /// In place.
  virtual void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::kSum) = 0;
  /// Returns [size * n, ...]: every rank's tensor (equal shapes) in rank order.
  virtual torch::Tensor all_gather(const torch::Tensor& tensor) = 0;
  /// In place; `tensor` has the same shape on every rank.
  virtual void broadcast(torch::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;
  /// Ranks with equal `color` form a new communicator, ordered by `key`. Collective.
  virtual std::shared_ptr<Communicator> split(int color, int key) = 0;
};

/// Byte strings over a communicator (collective over `comm`): `root`'s bytes on every rank, and every
/// rank's bytes on every rank in rank order (lengths may differ).
std::string broadcast_bytes(Communicator& comm, const std::string& bytes, int root);
std::vector<std::string> all_gather_bytes(Communicator& comm, const std::string& bytes);

/// The MPI backend over MPI_COMM_WORLD.
std::shared_ptr<Communicator> make_mpi_world(double timeout_s);

/// The NCCL backend over the ranks of `bootstrap` (unique id broadcast over it); one GPU per rank:
/// rank r uses CUDA device `device_index`. Throws CommError when NCCL is not built in.
std::shared_ptr<Communicator> make_nccl_communicator(const std::shared_ptr<Communicator>& bootstrap,
                                                     int device_index, double timeout_s);
bool nccl_available();

/// The reference all-to-all of the NCCL benchmark, as nccl-tests runs it: on its own NCCL
/// communicator over `bootstrap`'s ranks, one ncclSend and one ncclRecv of `bytes_per_peer` per peer
/// in a group, then a stream synchronize; no deadline. Throws CommError when NCCL is not built in.
using RawAlltoall = std::function<void(const torch::Tensor& send, torch::Tensor& recv, int64_t bytes_per_peer)>;
RawAlltoall make_raw_nccl_alltoall(const std::shared_ptr<Communicator>& bootstrap, int device_index);

}  // namespace switchyard::parallel
