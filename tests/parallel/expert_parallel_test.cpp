// Expert parallelism under mpiexec against the single-process reference (values and gradients).
#include <gtest/gtest.h>

#include "core/error.h"
#include "runtime/autocast.h"
#include "modules/moe_layer.h"
#include "parallel/communicator.h"
#include "parallel/expert_parallel.h"
#include "placement/planner.h"
#include "tests/test_util.h"

namespace switchyard::parallel {
namespace {
using placement::ExpertPlacement;
using placement::PlannerOptions;
using placement::PlanTopology;
using placement::RoutingTrace;
using placement::LayerRouting;
using placement::bytes_per_row;
using placement::plan_placement;
using placement::predict_rows;

using core::DispatcherKind;
using switchyard::testing::rel_l2;

std::shared_ptr<Communicator> world() {
  static auto comm = make_mpi_world(60.0);
  return comm;
}

core::Config base_config(int64_t ep, DispatcherKind dispatcher, int64_t ranks_per_node) {
  core::Config c;
  c.model.d_model = 8;
  c.model.init_std = 0.3;
  c.model.moe.num_experts = 8;
  c.model.moe.top_k = 2;
  c.model.moe.ffn_hidden = 6;
  c.losses.load_balance = 0.1;
  c.losses.load_balance_scope = core::BalanceScope::kGlobalBatch;
  c.losses.z_loss = 0.01;
  c.parallel.expert_parallel = ep;
  c.parallel.dispatcher = dispatcher;
  c.parallel.ranks_per_node = ranks_per_node;
  return c;
}

struct Built {
  std::shared_ptr<ProcessGroups> groups;
  std::shared_ptr<ExpertParallelDispatcher> dispatcher;
  modules::MoELayer layer{nullptr};
};

Built build(const core::Config& c, std::vector<int64_t> owner = {}, bool dedup = true,
            std::shared_ptr<Communicator> comm = world()) {
  Built b;
  b.groups = ProcessGroups::create(comm, c.parallel);
  auto placement = owner.empty() ? ExpertPlacement::contiguous(c.model.moe.num_experts, c.parallel.expert_parallel)
                                 : ExpertPlacement(owner, c.parallel.expert_parallel);
  b.dispatcher = std::make_shared<ExpertParallelDispatcher>(b.groups, placement, c.parallel.dispatcher, dedup);
  torch::manual_seed(7);
  b.layer = modules::MoELayer(c.model, c.losses, 0, 5, b.dispatcher);
  attach(*b.layer, *b.dispatcher, *b.groups, c);
  return b;
}

modules::MoELayer reference_layer(const core::Config& c) {
  torch::manual_seed(7);
  return modules::MoELayer(c.model, c.losses, 0, 5);
}

/// Each rank's share of a global batch: rows [offset, offset + count).
struct Share {
  int64_t offset, count, total;
};
Share even_share(int64_t per_rank) {
  const int r = world()->rank(), n = world()->size();
  return {r * per_rank, per_rank, n * per_rank};
}

torch::Tensor total_loss(const modules::MoEOutput& out, const torch::Tensor& probe) {
  auto loss = (out.y * probe).sum(1).mean();
  for (const auto& [name, value] : out.losses) loss = loss + value;
  return loss;
}

/// How a distributed run differs from the CPU fp32 single-process reference.
struct Backend {
  torch::Device device = torch::kCPU;
  std::shared_ptr<Communicator> comm;  ///< null: the MPI world
  bool bf16 = false;                   ///< bf16 autocast (CUDA)
  double tolerance = 1e-5;             ///< relative L2
};

/// Runs the distributed layer on this rank's share and the reference on the global batch; compares
/// outputs, input gradients and every parameter gradient after sync_gradients.
void expect_matches_reference(const core::Config& c, std::vector<int64_t> owner = {}, Backend backend = {}) {
  const auto device = backend.device;
  const Share share = even_share(6);
  torch::manual_seed(123);
  const auto x_all = torch::randn({share.total, 8});
  const auto probe_all = torch::randn({share.total, 8});

  auto ref = reference_layer(c);
  const auto x_ref = x_all.clone().requires_grad_();
  total_loss(ref->forward(x_ref), probe_all).backward();

  auto dist = build(c, owner, true, backend.comm ? backend.comm : world());
  dist.layer->to(device);
  const auto x = x_all.narrow(0, share.offset, share.count).to(device).requires_grad_();
  modules::MoEOutput out;
  {
    runtime::Bf16Autocast autocast(backend.bf16);
    out = dist.layer->forward(x);
    total_loss(out, probe_all.narrow(0, share.offset, share.count).to(device)).backward();
  }
  sync_gradients(*dist.layer, *dist.groups);
  const double tol = backend.tolerance;

  const std::string what = "EP " + std::to_string(c.parallel.expert_parallel) + " of " +
                           std::to_string(world()->size()) + ", " + core::enum_name(c.parallel.dispatcher) + ", " +
                           device.str() + ", " + dist.groups->ep->backend_name() + (backend.bf16 ? ", bf16" : "");
  const int64_t n = world()->size();
  EXPECT_LT(rel_l2(out.y.to(torch::kCPU, torch::kFloat32), ref->forward(x_all).y.narrow(0, share.offset, share.count)), tol)
      << what;
  EXPECT_LT(rel_l2(x.grad().to(torch::kCPU, torch::kFloat32) / n, x_ref.grad().narrow(0, share.offset, share.count)), tol)
      << what;
  const auto ids = torch::tensor(dist.dispatcher->local_expert_ids(), torch::kInt64);
  auto ref_params = ref->named_parameters();
  for (const auto& p : dist.layer->named_parameters()) {
    auto expected = ref_params[p.key()].grad();
    if (is_expert_parameter(p.key())) expected = expected.index_select(0, ids);
    EXPECT_LT(rel_l2(p.value().grad().to(torch::kCPU, torch::kFloat32), expected), tol) << what << " " << p.key();
  }
}

TEST(ExpertParallel, WorldSizeInvarianceFlat) {
  const int n = world()->size();
  for (int ep = 1; ep <= n; ep *= 2) {
    if (n % ep) continue;
    expect_matches_reference(base_config(ep, DispatcherKind::kFlat, 0));
  }
}

TEST(ExpertParallel, WorldSizeInvarianceHierarchical) {
  const int n = world()->size();
  for (int rpn : {1, 2}) {
    if (n % rpn) continue;
    expect_matches_reference(base_config(n, DispatcherKind::kHierarchical, rpn));
  }
}

TEST(ExpertParallel, OverlapChunksMatchTheReference) {
  // Tokens in 3 chunks (6 per rank: 2 each) and in 4 (uneven: 2, 1, 2, 1), flat and hierarchical.
  const int n = world()->size();
  for (const int64_t chunks : {3, 4}) {
    auto flat = base_config(n, DispatcherKind::kFlat, 0);
    flat.parallel.overlap_chunks = chunks;
    expect_matches_reference(flat);
    if (n % 2 == 0) {
      auto hier = base_config(n, DispatcherKind::kHierarchical, n / 2);
      hier.parallel.overlap_chunks = chunks;
      expect_matches_reference(hier);
    }
  }
}

TEST(ExpertParallel, CudaTensorsOverTheMpiBackendMatchTheCpuReference) {
  // On the GPU machine every rank shares the one GPU; the MPI backend stages CUDA tensors through
  // host memory (that Open MPI is not CUDA-aware).
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const int n = world()->size();
  Backend cuda;
  cuda.device = torch::kCUDA;
  expect_matches_reference(base_config(n, DispatcherKind::kFlat, 0), {}, cuda);
  if (n % 2 == 0) expect_matches_reference(base_config(n, DispatcherKind::kHierarchical, n / 2), {}, cuda);
}

TEST(ExpertParallel, NcclBackendMatchesTheSingleProcessReference) {
  // One GPU per rank (NCCL refuses two ranks on one GPU): EP 1, 2, 4, ... up to the world size, flat
  // and hierarchical on emulated nodes; fp32 to 1e-4 (TF32 off), bf16 autocast to 2e-2.
  const int n = world()->size();
  if (!nccl_available()) GTEST_SKIP() << "NCCL not built in";
  if (torch::cuda::device_count() < static_cast<size_t>(n)) GTEST_SKIP() << "needs " << n << " GPUs, " << torch::cuda::device_count() << " visible";
  const int gpu = world()->rank();
  auto nccl = make_nccl_communicator(world(), gpu, 60.0);
  ASSERT_EQ(nccl->backend_name(), "nccl");
  for (const bool bf16 : {false, true}) {
    const Backend backend{torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(gpu)), nccl, bf16, bf16 ? 2e-2 : 1e-4};
    for (int ep = 1; ep <= n; ep *= 2) {
      if (n % ep == 0) expect_matches_reference(base_config(ep, DispatcherKind::kFlat, 0), {}, backend);
    }
    for (int rpn = 1; rpn < n; rpn *= 2) {
      if (n % rpn == 0) expect_matches_reference(base_config(n, DispatcherKind::kHierarchical, rpn), {}, backend);
    }
    // Exchanges on a side stream overlapping the experts (parallel.overlap_chunks).
    auto overlapped = base_config(n, DispatcherKind::kFlat, 0);
    overlapped.parallel.overlap_chunks = 3;
    expect_matches_reference(overlapped, {}, backend);
    if (n > 1) {
      overlapped = base_config(n, DispatcherKind::kHierarchical, 1);
      overlapped.parallel.overlap_chunks = 2;
      expect_matches_reference(overlapped, {}, backend);
    }
  }
}

TEST(ExpertParallel, RandomPlacementEqualsReference) {
  const int n = world()->size();
  auto perm = torch::randperm(8, torch::TensorOptions().dtype(torch::kInt64));
  world()->broadcast(perm, 0);
  std::vector<int64_t> owner(8);
  for (int64_t i = 0; i < 8; ++i) owner[perm[i].item<int64_t>()] = i / (8 / n);
  expect_matches_reference(base_config(n, DispatcherKind::kFlat, 0), owner);
  if (n % 2 == 0) expect_matches_reference(base_config(n, DispatcherKind::kHierarchical, 2), owner);
}

/// Forward outputs and all gradients of two dispatch configurations, bitwise.
void expect_bitwise_equal(const core::Config& a_cfg, const core::Config& b_cfg, torch::Device device = torch::kCPU,
                          int64_t tokens_per_rank = 7) {
  const Share share = even_share(tokens_per_rank);
  torch::manual_seed(99);
  const auto x_all = torch::randn({share.total, 8});
  auto run = [&](const core::Config& c) {
    auto b = build(c);
    b.layer->to(device);
    auto x = x_all.narrow(0, share.offset, share.count).to(device).requires_grad_();
    auto out = b.layer->forward(x);
    total_loss(out, torch::ones_like(out.y)).backward();
    std::vector<torch::Tensor> result{out.y.detach(), x.grad()};
    for (const auto& p : b.layer->parameters()) result.push_back(p.grad());
    return result;
  };
  const auto a = run(a_cfg), b = run(b_cfg);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "tensor " << i;
}

TEST(ExpertParallel, HierarchicalEqualsFlatBitwise) {
  const int n = world()->size();
  for (int rpn : {1, 2}) {
    if (n % rpn) continue;
    expect_bitwise_equal(base_config(n, DispatcherKind::kFlat, rpn), base_config(n, DispatcherKind::kHierarchical, rpn));
  }
}

TEST(ExpertParallel, CudaRunsAreBitwiseReproducible) {
  // Every sum of the exchange is a gather-sum without atomics, so two runs on a GPU agree in every bit
  // (with index_add's atomics they did not). 4,096 tokens per rank, so many rows meet in one sum.
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const int n = world()->size();
  const auto flat = base_config(n, DispatcherKind::kFlat, 0);
  expect_bitwise_equal(flat, flat, torch::kCUDA, 4096);
  if (n % 2 == 0) {
    const auto hier = base_config(n, DispatcherKind::kHierarchical, n / 2);
    expect_bitwise_equal(hier, hier, torch::kCUDA, 4096);
    expect_bitwise_equal(base_config(n, DispatcherKind::kFlat, n / 2), hier, torch::kCUDA, 4096);
  }
}

TEST(ExpertParallel, DedupSendsFewerBytesForEqualResults) {
  const int n = world()->size();
  if (n < 2) GTEST_SKIP() << "needs peers";
  auto c = base_config(n, DispatcherKind::kFlat, 1);
  torch::manual_seed(5);
  const auto x = torch::randn({20, 8});
  auto with = build(c, {}, true), without = build(c, {}, false);
  const auto y_with = with.layer->forward(x).y, y_without = without.layer->forward(x).y;
  EXPECT_LT(rel_l2(y_with, y_without), 1e-6);
  auto bytes = torch::tensor({with.dispatcher->stats().inter_node_bytes, without.dispatcher->stats().inter_node_bytes});
  world()->all_reduce(bytes, ReduceOp::kSum);
  EXPECT_LT(bytes[0].item<int64_t>(), bytes[1].item<int64_t>());
  EXPECT_GT(bytes[0].item<int64_t>(), 0);
}

void expect_uneven_tokens_match(int64_t chunks);

TEST(ExpertParallel, UnevenTokensAndIdleExpertsAndRanks) {
  // Rank r holds {3, 5, 0, 7}[r % 4] tokens, and every token hashes to one expert: most experts and
  // some ranks get nothing. Loss is a plain sum, so gradients add up without scaling. With 4 overlap
  // chunks too: ranks with fewer tokens than chunks must still issue every chunk's exchange (found by
  // the config-space tester: they issued fewer, and the collectives went out of step).
  for (const int64_t chunks : {1, 4}) expect_uneven_tokens_match(chunks);
}

void expect_uneven_tokens_match(int64_t chunks) {
  const int n = world()->size(), r = world()->rank();
  const int64_t counts[] = {3, 5, 0, 7};
  int64_t offset = 0, total = 0;
  for (int i = 0; i < n; ++i) {
    if (i < r) offset += counts[i % 4];
    total += counts[i % 4];
  }
  auto c = base_config(n, DispatcherKind::kFlat, 0);
  c.model.moe.router.kind = core::RouterKind::kHash;
  c.losses.load_balance = 0;
  c.losses.z_loss = 0;
  c.parallel.overlap_chunks = chunks;
  torch::manual_seed(3);
  const auto x_all = torch::randn({total, 8});
  const auto ids_all = torch::full({total}, 11, torch::kInt64);
  auto ref = reference_layer(c);
  auto x_ref = x_all.clone().requires_grad_();
  const auto y_ref = ref->forward(x_ref, {ids_all}).y;
  y_ref.sum().backward();

  auto dist = build(c);
  auto x = x_all.narrow(0, offset, counts[r % 4]).clone().requires_grad_();
  const auto y = dist.layer->forward(x, {ids_all.narrow(0, offset, counts[r % 4])}).y;
  y.sum().backward();
  sync_gradients(*dist.layer, *dist.groups);
  if (x.size(0) > 0) {
    EXPECT_LT(rel_l2(y, y_ref.narrow(0, offset, x.size(0))), 1e-6);
    EXPECT_LT(rel_l2(x.grad(), x_ref.grad().narrow(0, offset, x.size(0))), 1e-6);
  } else {
    EXPECT_EQ(y.size(0), 0);
  }
  const auto ids = torch::tensor(dist.dispatcher->local_expert_ids(), torch::kInt64);
  const auto expected = ref->experts->w_in.grad().index_select(0, ids);
  EXPECT_TRUE(torch::allclose(dist.layer->experts->w_in.grad() * n, expected, 1e-5, 1e-7));
}

/// A token id the hash router sends to experts first, first + 1, ... (mod num_experts).
int64_t token_for_expert(int64_t first, int64_t num_experts) {
  for (int64_t id = 0;; ++id) {
    const int64_t h = ((id * 2654435761LL) & 0xffffffffLL) / 256;
    if (h % num_experts == first) return id;
  }
}

TEST(ExpertParallel, OddTopKWithOneReceivedRow) {
  // Issue 18.1: with k odd, a receive buffer of one packed row kept its int64 metadata at a byte
  // offset of 4 (d + k) floats, which cannot be viewed as int64 ("storage_offset must be divisible
  // by 8"). Rank 0 sends one token to rank 1 (its only received row) and every other token to rank
  // 0's experts; k experts per rank, so each token's k experts sit on one rank (one row).
  const int n = world()->size(), r = world()->rank();
  if (n < 2) GTEST_SKIP() << "needs peers";
  for (int64_t k : {1, 3}) {
    auto c = base_config(n, DispatcherKind::kFlat, 0);
    c.model.d_model = 8;  // the metadata at 4 (8 + k) bytes: not a multiple of 8 for odd k
    c.model.moe.num_experts = k * n;
    c.model.moe.top_k = k;
    c.model.moe.router.kind = core::RouterKind::kHash;
    c.losses.load_balance = 0;
    c.losses.z_loss = 0;
    const int64_t to_rank0 = token_for_expert(0, k * n), to_rank1 = token_for_expert(k, k * n);
    const auto ids_all = torch::tensor(std::vector<int64_t>{to_rank0, to_rank1, to_rank0, to_rank0});
    // Rank 0 holds the first two tokens, rank 1 the third, rank 2 the fourth (4 ranks), others none.
    const int64_t offset = r == 0 ? 0 : std::min<int64_t>(r + 1, 4), count = r == 0 ? 2 : (r <= 2 ? 1 : 0);
    const int64_t total = std::min<int64_t>(n + 1, 4);
    torch::manual_seed(4);
    const auto x_all = torch::randn({total, 8});
    auto ref = reference_layer(c);
    const auto y_ref = ref->forward(x_all, {ids_all.narrow(0, 0, total)}).y;
    auto dist = build(c);
    const auto y = dist.layer->forward(x_all.narrow(0, offset, count), {ids_all.narrow(0, offset, count)}).y;
    EXPECT_LT(rel_l2(y, y_ref.narrow(0, offset, count)), 1e-6) << "k " << k;
  }
}

/// SMILE and LocMoE on an emulated 2-node topology: every rank's output and losses equal a
/// single-process layer on the same tokens (with its node's locality mask).
void expect_matches_local_reference(core::Config c) {
  auto dist = build(c);
  torch::manual_seed(40 + world()->rank());
  const auto x = torch::randn({16, c.model.d_model}, torch::requires_grad());
  const auto out = dist.layer->forward(x);
  auto loss = out.y.pow(2).sum();
  for (const auto& [name, value] : out.losses) loss = loss + value;
  loss.backward();

  auto ref = reference_layer(c);
  ref->set_local_expert_mask(dist.dispatcher->node_local_expert_mask());
  const auto x_ref = x.detach().clone().requires_grad_();
  const auto ref_out = ref->forward(x_ref);
  auto ref_loss = ref_out.y.pow(2).sum();
  for (const auto& [name, value] : ref_out.losses) ref_loss = ref_loss + value;
  ref_loss.backward();

  EXPECT_LT(rel_l2(out.y, ref_out.y), 1e-5);
  EXPECT_LT(rel_l2(x.grad(), x_ref.grad()), 1e-5);
  ASSERT_EQ(out.losses.size(), ref_out.losses.size());
  for (const auto& [name, value] : out.losses) {
    EXPECT_NEAR(value.item<double>(), ref_out.losses.at(name).item<double>(), 1e-6) << name;
  }
  EXPECT_EQ(out.stats.capacity, ref_out.stats.capacity);
}

TEST(ExpertParallel, SmileOnTwoNodes) {
  const int n = world()->size();
  auto c = base_config(n, DispatcherKind::kHierarchical, n >= 2 ? n / 2 : 1);
  c.model.moe.router.kind = core::RouterKind::kBilevel;
  c.model.moe.router.groups = 2;
  c.model.moe.top_k = 1;
  c.losses.load_balance_scope = core::BalanceScope::kMicroBatch;
  expect_matches_local_reference(c);
}

TEST(ExpertParallel, LocMoEOnTwoNodes) {
  const int n = world()->size();
  auto c = base_config(n, DispatcherKind::kHierarchical, n >= 2 ? n / 2 : 1);
  c.model.moe.router.kind = core::RouterKind::kGrap;
  c.model.moe.top_k = 1;
  c.model.moe.capacity_factor = 1.0;
  c.losses.locality = 0.05;
  c.losses.load_balance_scope = core::BalanceScope::kMicroBatch;
  auto probe = build(c);
  const auto mask = probe.dispatcher->node_local_expert_mask();
  EXPECT_EQ(mask.sum().item<int64_t>(), n >= 2 ? 4 : 8);  // half the experts sit on this node
  expect_matches_local_reference(c);
}

/// Forward and backward of a layer whose router sends token j mostly to experts {j % 4, j % 4 + 4}
/// (pairs that contiguous placement splits over the two emulated nodes); returns the output and the
/// exchange statistics summed over ranks, and the routing as a trace layer (all ranks' tokens).
struct PlacedRun {
  torch::Tensor y;
  int64_t inter = 0, intra = 0;
  LayerRouting routing;
};
PlacedRun run_paired(const core::Config& c, const std::vector<int64_t>& owner, const torch::Tensor& x) {
  auto b = build(c, owner);
  {
    torch::NoGradGuard g;
    auto w = b.layer->named_parameters()["router.weight"];
    w.zero_();
    for (int64_t e = 0; e < 8; ++e) w[e][e % 4] = 5.0 + 0.1 * static_cast<double>(e / 4);
  }
  const auto xr = x.clone().requires_grad_();
  const auto out = b.layer->forward(xr);
  total_loss(out, torch::ones_like(out.y)).backward();
  PlacedRun r;
  r.y = out.y.detach();
  auto bytes = torch::tensor({b.dispatcher->stats().inter_node_bytes, b.dispatcher->stats().intra_node_bytes});
  world()->all_reduce(bytes, ReduceOp::kSum);
  r.inter = bytes[0].item<int64_t>();
  r.intra = bytes[1].item<int64_t>();
  const auto all = world()->all_gather(out.stats.expert_idx.to(torch::kInt32).contiguous());
  r.routing.top_k = 2;
  r.routing.experts.assign(all.data_ptr<int32_t>(), all.data_ptr<int32_t>() + all.numel());
  r.routing.gates.assign(all.numel(), 0.5f);
  for (int rank = 0; rank < world()->size(); ++rank) r.routing.source_rank.insert(r.routing.source_rank.end(), x.size(0), rank);
  return r;
}

TEST(ExpertParallel, PlannedPlacementSendsThePredictedBytesAndFewerInterNodeBytes) {
  // 4 ranks as 2 emulated nodes, hierarchical: measured bytes equal the planner's prediction exactly,
  // for contiguous placement and for the plan; the plan cuts inter-node bytes and changes no output.
  if (world()->size() != 4) GTEST_SKIP() << "checked at 4 ranks";
  auto c = base_config(4, DispatcherKind::kHierarchical, 2);
  torch::manual_seed(17 + world()->rank());
  const auto x = torch::eye(8).narrow(1, 0, 8).repeat({3, 1}) + 0.05 * torch::randn({24, 8});
  const auto contiguous = ExpertPlacement::contiguous(8, 4).owners();
  const auto base = run_paired(c, contiguous, x);
  const PlanTopology topo{4, 2};
  const double row = bytes_per_row(8, 2, 4), tokens = static_cast<double>(base.routing.num_tokens());
  const auto predicted = predict_rows(base.routing, contiguous, topo, DispatcherKind::kHierarchical);
  EXPECT_NEAR(predicted.inter_node * tokens * row, static_cast<double>(base.inter), 1e-6);
  EXPECT_NEAR(predicted.intra_node * tokens * row, static_cast<double>(base.intra), 1e-6);

  RoutingTrace trace;
  trace.num_experts = 8;
  trace.ep_size = 4;
  trace.layers = {base.routing};
  PlannerOptions o;
  o.topology = topo;
  o.solver = placement::PlanSolver::kGreedy;
  o.load_slack = 1.0;
  const auto plan = plan_placement(trace, o).layers.at(0).owner;
  const auto planned = run_paired(c, plan, x);
  EXPECT_LT(rel_l2(planned.y, base.y), 1e-6);
  const auto expected = predict_rows(base.routing, plan, topo, DispatcherKind::kHierarchical);
  EXPECT_NEAR(expected.inter_node * tokens * row, static_cast<double>(planned.inter), 1e-6);
  EXPECT_LT(planned.inter, base.inter / 2) << "contiguous " << base.inter << ", planned " << planned.inter;

  // The flat dispatcher's rows (one per token and other rank) are predicted as exactly.
  const auto flat_cfg = base_config(4, DispatcherKind::kFlat, 2);
  const auto flat = run_paired(flat_cfg, plan, x);
  const auto flat_rows = predict_rows(flat.routing, plan, topo, DispatcherKind::kFlat);
  EXPECT_NEAR(flat_rows.inter_node * tokens * row, static_cast<double>(flat.inter), 1e-6);
  EXPECT_NEAR(flat_rows.intra_node * tokens * row, static_cast<double>(flat.intra), 1e-6);
}

TEST(ExpertParallel, GroupsDescribeTheLayout) {
  const int n = world()->size();
  if (n != 4) GTEST_SKIP() << "layout checked at 4 ranks";
  auto c = base_config(2, DispatcherKind::kFlat, 2);
  auto g = ProcessGroups::create(world(), c.parallel);
  const int r = world()->rank();
  EXPECT_EQ(g->ep->size(), 2);
  EXPECT_EQ(g->ep_rank, r % 2);
  EXPECT_EQ(g->expert_dp->size(), 2);
  EXPECT_EQ(g->topology.node_idx(), r / 2);
  EXPECT_EQ(g->ep_num_nodes, 1);
  auto c4 = base_config(4, DispatcherKind::kHierarchical, 2);
  auto g4 = ProcessGroups::create(world(), c4.parallel);
  EXPECT_EQ(g4->ep_num_nodes, 2);
  EXPECT_EQ(g4->ep_local_rank, r % 2);
  EXPECT_EQ(g4->ep_inter_node->size(), 2);
  EXPECT_EQ(g4->ep_intra_node->size(), 2);
}

}  // namespace
}  // namespace switchyard::parallel
