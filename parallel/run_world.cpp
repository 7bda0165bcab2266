// Backend and device choice for a run.
#include "parallel/run_world.h"

#include "core/error.h"
#include "core/logging.h"
#include "parallel/process_groups.h"

namespace switchyard::parallel {

RankGpu gpu_of_rank(Communicator& world) {
  const auto local = physical_node_local(world);
  RankGpu g;
  g.ranks_on_node = local.size;
  g.gpus = static_cast<int>(torch::cuda::device_count());
  SY_CHECK_AS(ConfigError, g.gpus > 0, "train.device: cuda requested but no CUDA device is visible on rank ", world.rank());
  g.device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local.rank % g.gpus));
  return g;
}

RunWorld open_run_world(const core::Config& config) {
  RunWorld w;
  const double timeout = config.parallel.timeout_s;
  auto mpi = make_mpi_world(timeout);
  w.comm = mpi;
  const auto backend = config.parallel.backend;
  if (config.train.device != core::DeviceKind::kCuda) return w;

  const auto gpu = gpu_of_rank(*mpi);
  const int ranks_here = gpu.ranks_on_node, gpus = gpu.gpus;
  w.device = gpu.device;

  const bool one_gpu_per_rank = ranks_here <= gpus;
  if (backend == core::BackendKind::kNccl) {
    SY_CHECK_AS(ConfigError, nccl_available(),
                "parallel.backend: nccl is not built in (configure with -DSWITCHYARD_WITH_CUDA=ON and NCCL)");
    SY_CHECK_AS(ConfigError, one_gpu_per_rank, "parallel.backend: nccl needs one GPU per rank, but ", ranks_here,
                " ranks share ", gpus, " GPU(s) on the node of rank ", mpi->rank(), " (use backend mpi or fewer ranks)");
  }
  const bool use_nccl =
      backend == core::BackendKind::kNccl || (backend == core::BackendKind::kAuto && nccl_available() && one_gpu_per_rank);
  if (use_nccl) {
    w.comm = make_nccl_communicator(mpi, w.device.index(), timeout);
  } else if (backend == core::BackendKind::kAuto && nccl_available()) {
    core::log_info("parallel.backend auto: ", ranks_here, " ranks share ", gpus,
                   " GPU(s) on a node, so MPI (NCCL needs one GPU per rank)");
  }
  core::log_info("backend ", w.comm->backend_name(), ", device ", w.device.str());
  return w;
}

}  // namespace switchyard::parallel
