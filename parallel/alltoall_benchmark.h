// `switchyard bench alltoall`: our exchange against a raw MPI_Alltoallv of the same bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace switchyard::parallel {

struct AlltoallBenchOptions {
  std::vector<int64_t> bytes_per_peer = {65536, 1 << 20, 4 << 20, 16 << 20};
  int64_t ranks_per_node = 0;  ///< 0 = detect
  int iters = 20;
  int warmup = 3;
  std::string device = "cpu";
  double timeout_s = 300;
};

/// Collective over MPI_COMM_WORLD. Rank 0 prints one JSON line per message size: median times of the
/// raw MPI_Alltoallv, our flat exchange (Communicator::all_to_all_v) and our hierarchical two-stage
/// exchange (inter-node among equal local ranks, then intra-node), and bus bandwidths.
void run_alltoall_benchmark(const AlltoallBenchOptions& options);

}  // namespace switchyard::parallel
