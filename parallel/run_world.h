// The world communicator and device of one training or evaluation process, chosen from the config.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "core/config.h"
#include "parallel/communicator.h"

namespace switchyard::parallel {

struct RunWorld {
  std::shared_ptr<Communicator> comm;
  torch::Device device{torch::kCPU};
};

/// The GPU a rank drives: its local rank on its (physical) node modulo the visible GPUs, and how
/// many ranks share the node. Collective over `world` (host names); ConfigError when no GPU is visible.
struct RankGpu {
  torch::Device device{torch::kCPU};
  int ranks_on_node = 1, gpus = 0;
};
RankGpu gpu_of_rank(Communicator& world);

/// Collective over MPI_COMM_WORLD (MPI must be running). On `train.device: cuda` each rank takes the
/// GPU of gpu_of_rank. The backend:
///   nccl: NCCL over those GPUs; ConfigError when NCCL is not built in or two ranks of a node would
///         share a GPU (NCCL refuses that);
///   auto: NCCL when built in, on CUDA, with one GPU per rank; MPI otherwise;
///   mpi:  MPI (CUDA tensors staged through host memory).
RunWorld open_run_world(const core::Config& config);

}  // namespace switchyard::parallel
