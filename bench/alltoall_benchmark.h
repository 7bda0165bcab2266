// `switchyard bench alltoall`: our exchange against the raw library all-to-all of the same bytes
// (MPI_Alltoallv for the MPI backend, grouped ncclSend/ncclRecv for NCCL).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace switchyard::bench {

struct AlltoallBenchOptions {
  std::vector<int64_t> bytes_per_peer = {65536, 1 << 20, 4 << 20, 16 << 20};
  int64_t ranks_per_node = 0;  ///< 0 = detect
  int iters = 20;
  int warmup = 3;
  std::string device = "cpu";
  std::string backend = "mpi";  ///< mpi, or nccl (CUDA, one GPU per rank)
  double timeout_s = 300;
};

/// Collective over MPI_COMM_WORLD. Rank 0 prints one JSON line per message size: median times of the
/// raw library all-to-all (`raw_ms`), our flat exchange (Communicator::all_to_all_v) and our
/// hierarchical two-stage exchange (inter-node among equal local ranks, then intra-node), and bus
/// bandwidths as nccl-tests defines them for all-to-all.
void run_alltoall_benchmark(const AlltoallBenchOptions& options);

}  // namespace switchyard::bench
