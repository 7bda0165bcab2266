// All-to-all benchmark: the raw library call vs our flat and hierarchical exchanges, same bytes, same run.
#include "bench/alltoall_benchmark.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>

#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"
#include "parallel/run_world.h"

namespace switchyard::bench {
using namespace parallel;  // NOLINT: the benchmark drives the exchange's types throughout
namespace {

double median_ms(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// Times `fn` (collective) `iters` times after `warmup` runs; the slowest rank's time per iteration.
double time_collective(Communicator& world, int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> times;
  for (int i = 0; i < iters; ++i) {
    world.barrier();
    const auto start = std::chrono::steady_clock::now();
    fn();
    auto ms = torch::tensor({std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()},
                            torch::kFloat64);
    world.all_reduce(ms, ReduceOp::kMax);
    times.push_back(ms.item<double>());
  }
  return median_ms(times);
}


}  // namespace

void run_alltoall_benchmark(const AlltoallBenchOptions& options) {
  auto mpi_world = make_mpi_world(options.timeout_s);
  const bool nccl = options.backend == "nccl";
  SY_CHECK_AS(UsageError, options.backend == "mpi" || nccl, "--backend: mpi or nccl, got ", options.backend);
  SY_CHECK_AS(UsageError, !nccl || options.device == "cuda", "--backend nccl needs --device cuda");
  SY_CHECK_AS(UsageError, !nccl || nccl_available(), "--backend nccl: NCCL is not built in");
  SY_CHECK_AS(UsageError, options.device == "cpu" || torch::cuda::is_available(), "--device cuda: no CUDA device");
  const auto device = options.device == "cuda" ? gpu_of_rank(*mpi_world).device : torch::Device(torch::kCPU);
  auto world = nccl ? make_nccl_communicator(mpi_world, device.index(), options.timeout_s) : mpi_world;
  const int n = world->size();
  core::ParallelConfig pc;
  pc.expert_parallel = n;
  pc.ranks_per_node = options.ranks_per_node;
  pc.timeout_s = options.timeout_s;
  pc.dispatcher = core::DispatcherKind::kFlat;
  auto groups = ProcessGroups::create(world, pc);
  const int per_node = groups->ep_ranks_per_node;
  const bool can_hier = per_node > 0;
  const int nodes = can_hier ? n / per_node : 1;
  RawAlltoall raw_nccl;
  if (nccl) raw_nccl = make_raw_nccl_alltoall(mpi_world, device.index());

  for (const int64_t bytes : options.bytes_per_peer) {
    constexpr int64_t kRow = 1024;  // rows of 1 KiB, as token rows would be
    const int64_t rows = std::max<int64_t>(1, bytes / kRow);
    const auto send = torch::randint(0, 255, {rows * n, kRow}, torch::dtype(torch::kUInt8)).to(device);
    const std::vector<int64_t> counts(n, rows);

    double raw_ms = 0;
    if (nccl) {
      auto recv = torch::empty_like(send);
      raw_ms = time_collective(*mpi_world, options.warmup, options.iters, [&] { raw_nccl(send, recv, rows * kRow); });
    } else {
      // Raw: one blocking MPI_Alltoallv on host buffers of the same layout.
      auto host_send = send.to(torch::kCPU).contiguous();
      auto host_recv = torch::empty_like(host_send);
      std::vector<int> c(n, static_cast<int>(rows * kRow)), displ(n);
      for (int p = 0; p < n; ++p) displ[p] = static_cast<int>(p * rows * kRow);
      raw_ms = time_collective(*mpi_world, options.warmup, options.iters, [&] {
        if (device.is_cuda()) host_send.copy_(send);
        MPI_Alltoallv(host_send.data_ptr(), c.data(), displ.data(), MPI_BYTE, host_recv.data_ptr(), c.data(),
                      displ.data(), MPI_BYTE, MPI_COMM_WORLD);
        if (device.is_cuda()) send.copy_(host_recv);
      });
    }
    const double flat_ms = time_collective(*mpi_world, options.warmup, options.iters,
                                           [&] { world->all_to_all_v(send, counts, counts); });
    double hier_ms = -1;
    if (can_hier && nodes > 1) {
      // Stage one: all rows for node m go to (m, my local rank); stage two: spread within the node.
      const std::vector<int64_t> node_counts(nodes, rows * per_node);
      const std::vector<int64_t> local_counts(per_node, rows * nodes);
      hier_ms = time_collective(*mpi_world, options.warmup, options.iters, [&] {
        auto staged = groups->ep_inter_node->all_to_all_v(send, node_counts, node_counts);
        // Regroup [source node][dest local rank] -> [dest local rank][source node].
        staged = staged.view({nodes, per_node, rows, kRow}).transpose(0, 1).contiguous().view({-1, kRow});
        groups->ep_intra_node->all_to_all_v(staged, local_counts, local_counts);
      });
    }
    if (world->rank() == 0) {
      // Bus bandwidth as NCCL defines it for all-to-all: bytes moved * (n - 1) / n per rank.
      const double total = static_cast<double>(rows * kRow * n);
      auto busbw = [&](double ms) { return ms > 0 ? total * (n - 1) / n / (ms * 1e-3) / 1e9 : -1.0; };
      std::printf(
          "{\"bench\":\"alltoall\",\"backend\":\"%s\",\"device\":\"%s\",\"ranks\":%d,\"ranks_per_node\":%d,"
          "\"bytes_per_peer\":%lld,\"raw_ms\":%.4f,\"flat_ms\":%.4f,\"hierarchical_ms\":%.4f,\"flat_over_raw\":%.3f,"
          "\"hierarchical_over_raw\":%.3f,\"raw_busbw_gbps\":%.3f,\"flat_busbw_gbps\":%.3f}\n",
          options.backend.c_str(), options.device.c_str(), n, per_node, static_cast<long long>(rows * kRow), raw_ms, flat_ms, hier_ms,
          flat_ms / raw_ms, hier_ms > 0 ? hier_ms / raw_ms : -1.0, busbw(raw_ms), busbw(flat_ms));
      std::fflush(stdout);
    }
  }
}

}  // namespace switchyard::bench
