// The trainer under mpiexec against itself on one rank: regressions found by the config-space tester
// and the issues (global-batch balance under gradient accumulation, rank-invariant random routing,
// routing traces of dynamic-k routers, the odd-k exchange with one received row).
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <filesystem>
#include <functional>
#include <limits>
#include <map>

#include "core/crc32c.h"
#include "core/error.h"
#include "core/file_io.h"
#include "modules/moe_layer.h"
#include "parallel/communicator.h"
#include "parallel/expert_parallel.h"
#include "tests/test_util.h"
#include "trainer/trainer.h"

namespace switchyard::trainer {
namespace {

namespace fs = std::filesystem;
using switchyard::testing::rel_l2;

std::shared_ptr<parallel::Communicator> world() {
  static auto comm = parallel::make_mpi_world(120.0);
  return comm;
}

std::shared_ptr<parallel::Communicator> self() {
  static auto comm = world()->split(world()->rank(), 0);
  return comm;
}

/// Removes the test's run directories when the process ends.
struct Cleanup {
  std::string root;
  ~Cleanup() {
    try {
      if (!root.empty()) core::remove_tree(root);
    } catch (const std::exception&) {  // nothing to do at exit
    }
  }
};

/// A run directory this test owns (rank 0 names it; every rank uses it).
std::string run_dir(const std::string& name) {
  static std::string root;
  static Cleanup cleanup;
  if (root.empty()) {
    std::string mine;
    if (world()->rank() == 0) {
      char tmpl[] = "/tmp/trainer_mpi_test.XXXXXX";
      mine = ::mkdtemp(tmpl);
    }
    root = parallel::broadcast_bytes(*world(), mine, 0);
    if (world()->rank() == 0) cleanup.root = root;
  }
  return root + "/" + name + "_np" + std::to_string(world()->size());
}

core::Config tiny_config() {
  core::Config c;
  c.model.d_model = 16;
  c.model.n_layers = 2;
  c.model.n_heads = 2;
  c.model.seq_len = 8;
  c.model.dense_ffn_hidden = 16;
  c.model.moe.num_experts = 4;
  c.model.moe.top_k = 2;
  c.model.moe.ffn_hidden = 8;
  c.model.init_std = 0.2;
  c.data.synthetic_tokens = 8192;
  c.train.global_batch = 4;
  c.train.micro_batch = 1;
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 0;
  c.train.warmup_steps = 0;
  c.train.eval_batches = 1;
  return c;
}

TEST(TrainerRuns, GlobalBatchBalanceIsTheSameAtAnyRankCountAndMicroBatch) {
  // Issue 18.3: the global-batch load balance must count every micro-batch of the step, so its value
  // and gradients are those of one forward over the whole global batch, however the step is split.
  auto c = tiny_config();
  c.losses.load_balance = 0.5;  // large, so a wrong f shows
  c.losses.load_balance_scope = core::BalanceScope::kGlobalBatch;
  c.losses.z_loss = 0;
  c.train.global_batch = 4 * world()->size();
  c.train.micro_batch = 1;  // 4 micro-steps per rank
  c.train.run_dir = run_dir("global_dist");
  Trainer dist(c, {world(), torch::kCPU});
  const auto d = dist.compute_gradients();

  auto whole = c;  // one rank, one forward over the global batch
  whole.train.micro_batch = c.train.global_batch;
  whole.train.run_dir = run_dir("global_whole") + "_" + std::to_string(world()->rank());
  Trainer ref(whole, {self(), torch::kCPU});
  const auto r = ref.compute_gradients();
  EXPECT_NEAR(d.aux_loss, r.aux_loss, 1e-6 * std::abs(r.aux_loss));
  EXPECT_NEAR(d.losses.at("load_balance"), r.losses.at("load_balance"), 1e-6 * std::abs(r.losses.at("load_balance")));
  auto ref_params = ref.model().named_parameters();
  for (const auto& p : dist.model().named_parameters()) {
    if (parallel::is_expert_parameter(p.key())) continue;  // dense: the router and everything below it
    EXPECT_LT(rel_l2(p.value().grad(), ref_params[p.key()].grad()), 1e-4) << p.key();
  }
}

TEST(TrainerRuns, AModelThatCannotFitIsRefusedBeforeAllocating) {
  // Issue 23: sizes each inside their bounds whose product cannot fit (a 2^30 x 2^16 embedding is
  // 256 GiB in fp32 before gradients and moments) are refused by every rank at once, naming the keys,
  // instead of an allocator failure or an out-of-memory kill.
  auto c = tiny_config();
  c.model.vocab_size = int64_t{1} << 30;
  c.model.d_model = int64_t{1} << 16;
  c.model.n_heads = 16;
  c.train.run_dir = run_dir("too_big");
  try {
    Trainer t(c, {world(), torch::kCPU});
    FAIL() << "a 1 PiB model was built";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("model.vocab_size x model.d_model"), std::string::npos) << e.what();
  }
}

TEST(TrainerRuns, RandomAndNoisyRoutingAreTheSameAtAnyRankCount) {
  // Issue 18.5: the noise of the random and noisy_topk routers is drawn per token (counter-based),
  // not per position in a rank's batch: losses and gradients equal one rank's.
  for (auto kind : {core::RouterKind::kRandom, core::RouterKind::kNoisyTopK}) {
    auto c = tiny_config();
    c.model.moe.router.kind = kind;
    c.train.global_batch = 2 * world()->size();
    c.parallel.expert_parallel = world()->size() % 4 == 0 ? 4 : world()->size() % 2 == 0 ? 2 : 1;
    c.train.run_dir = run_dir(std::string("random_dist_") + core::enum_name(kind));
    Trainer dist(c, {world(), torch::kCPU});
    const auto d = dist.compute_gradients();
    auto one = c;
    one.parallel.expert_parallel = 1;
    one.train.run_dir = run_dir(std::string("random_one_") + core::enum_name(kind)) + "_" + std::to_string(world()->rank());
    Trainer ref(one, {self(), torch::kCPU});
    const auto r = ref.compute_gradients();
    EXPECT_NEAR(d.lm_loss, r.lm_loss, 1e-6 * r.lm_loss) << core::enum_name(kind);
    EXPECT_NEAR(d.grad_norm, r.grad_norm, 1e-5 * r.grad_norm) << core::enum_name(kind);
    for (size_t l = 0; l < d.loads.size(); ++l) EXPECT_TRUE(torch::equal(d.loads[l], r.loads[l])) << core::enum_name(kind);
  }
}

TEST(TrainerRuns, TracesCountTheTokensOfDynamicKRouters) {
  // Issue 18.4: a trace holds each traced token once, whatever the router's slots per token.
  struct Kind {
    core::RouterKind kind;
    int64_t top_k, k_max;
    double capacity;
  };
  for (const Kind& k : {Kind{core::RouterKind::kTopP, 3, 4, 0.0}, Kind{core::RouterKind::kTopP, 2, 4, 0.0},
                        Kind{core::RouterKind::kExpertChoice, 2, 4, 1.0}}) {
    auto c = tiny_config();
    c.model.moe.router.kind = k.kind;
    c.model.moe.top_k = k.top_k;
    c.model.moe.router.k_max = k.k_max;
    c.model.moe.capacity_factor = k.capacity;
    c.train.global_batch = world()->size();
    c.train.run_dir = run_dir("trace");
    Trainer t(c, {world(), torch::kCPU});
    const int64_t tokens = 3 * c.train.global_batch * c.model.seq_len;
    const auto trace = t.trace(tokens);
    const int64_t slots = modules::routing_slots(c.model.moe);
    for (const auto& layer : trace.layers) {
      EXPECT_EQ(layer.num_tokens(), tokens) << core::enum_name(k.kind) << " k " << k.top_k;
      EXPECT_EQ(layer.top_k, slots);
      EXPECT_EQ(static_cast<int64_t>(layer.experts.size()), tokens * slots);
    }
  }
}

TEST(TrainerRuns, RecomputationGivesTheGradientsOfTheFullGraph) {
  // train.recompute moe and full keep fewer activations and run parts of the forward again in the
  // backward (collectives included): losses and every gradient as without (issue 19).
  auto c = tiny_config();
  c.model.n_layers = 3;
  c.model.moe.every = 2;  // a dense block and an MoE block
  c.model.moe.shared_experts = 1;
  c.losses.load_balance = 0.1;
  c.losses.z_loss = 0.01;
  c.train.global_batch = 2 * world()->size();
  c.parallel.expert_parallel = world()->size() % 2 == 0 ? 2 : 1;
  std::map<std::string, torch::Tensor> reference;
  double reference_loss = 0;
  for (auto kind : {core::RecomputeKind::kNone, core::RecomputeKind::kMoE, core::RecomputeKind::kFull}) {
    c.train.recompute = kind;
    c.train.run_dir = run_dir(std::string("recompute_") + core::enum_name(kind));
    Trainer t(c, {world(), torch::kCPU});
    const auto r = t.compute_gradients();
    std::map<std::string, torch::Tensor> grads;
    for (const auto& p : t.model().named_parameters()) grads[p.key()] = p.value().grad().clone();
    if (kind == core::RecomputeKind::kNone) {
      reference = grads;
      reference_loss = r.lm_loss + r.aux_loss;
      continue;
    }
    EXPECT_NEAR(r.lm_loss + r.aux_loss, reference_loss, 1e-6 * reference_loss) << core::enum_name(kind);
    for (const auto& [name, g] : grads) {
      EXPECT_LT(rel_l2(g, reference.at(name)), 1e-6) << core::enum_name(kind) << " " << name;
    }
  }
}

TEST(TrainerRuns, ReplayedCudaGraphStepsTrainAsEagerSteps) {
  // train.cuda_graph: from the second step on, each step is one captured CUDA graph replayed, its
  // micro-batches, learning rate and AdamW step count refreshed before each replay. Losses, gradient
  // norms (clipping active) and parameters must follow the eager run's. Not bitwise: in the graph the
  // experts' weight gradients are grouped GEMMs, eagerly per-expert GEMMs (bf16 rounding apart).
  if (!torch::cuda::is_available() || world()->size() > 1) GTEST_SKIP() << "one rank on a CUDA device";
  auto c = tiny_config();
  c.model.d_model = 64;
  c.model.n_heads = 4;
  c.model.dense_ffn_hidden = 64;
  c.model.moe.ffn_hidden = 32;
  c.model.seq_len = 32;
  c.losses.load_balance = 0.01;
  c.losses.z_loss = 0.001;
  c.train.device = core::DeviceKind::kCuda;
  c.train.precision = core::Precision::kBf16;
  c.train.micro_batch = 2;  // two micro-batches a step
  c.train.warmup_steps = 3;
  c.train.grad_clip = 0.5;
  constexpr int kSteps = 6;
  std::vector<StepResult> results[2];
  std::map<std::string, torch::Tensor> params[2];
  for (const bool graph : {false, true}) {
    c.train.cuda_graph = graph ? core::CudaGraphMode::kOn : core::CudaGraphMode::kOff;
    c.train.run_dir = run_dir(graph ? "graph" : "eager");
    Trainer t(c, {world(), torch::Device(torch::kCUDA, 0)});
    for (int s = 0; s < kSteps; ++s) {
      results[graph].push_back(t.step_once());
      EXPECT_EQ(t.last_step_graphed(), graph && s > 0) << "step " << s + 1;
    }
    for (const auto& p : t.model().named_parameters()) params[graph][p.key()] = p.value().detach().cpu();
  }
  for (int s = 0; s < kSteps; ++s) {
    const auto &e = results[0][s], &g = results[1][s];
    EXPECT_FALSE(g.skipped);
    EXPECT_NEAR(g.lm_loss, e.lm_loss, 1e-2 * e.lm_loss) << "step " << s + 1;
    EXPECT_NEAR(g.grad_norm, e.grad_norm, 3e-2 * e.grad_norm) << "step " << s + 1;
    EXPECT_GT(e.grad_norm, c.train.grad_clip) << "step " << s + 1 << ": clipping should be active";
    ASSERT_EQ(g.losses.size(), e.losses.size());
  }
  for (const auto& [name, p] : params[0]) {
    EXPECT_LT(rel_l2(params[1].at(name), p), 1e-2) << name;
  }
}

/// Rewrites `dir`/manifest.pb with `edit` applied and a valid checksum (an edit no flip check sees).
void edit_manifest(const std::string& dir, const std::function<void(proto::CheckpointManifest&)>& edit) {
  proto::ManifestFile file;
  ASSERT_TRUE(file.ParseFromString(core::read_file(dir + "/manifest.pb")));
  proto::CheckpointManifest m;
  ASSERT_TRUE(m.ParseFromString(file.manifest()));
  edit(m);
  file.set_manifest(m.SerializeAsString());
  file.set_crc32c(core::crc32c(file.manifest().data(), file.manifest().size()));
  core::write_file_atomically(dir + "/manifest.pb", file.SerializeAsString());
}

TEST(TrainerRuns, ManifestFieldsAreCheckedAgainstTheCheckpointAndTheRun) {
  // Issue 24.4: the manifest is checksummed (byte flips: tests/trainer/run_dir_test.sh), and its
  // fields must describe this checkpoint and this run even when rewritten with a valid checksum.
  auto c = tiny_config();
  c.train.global_batch = world()->size();
  c.parallel.expert_parallel = world()->size() % 2 == 0 ? 2 : 1;
  c.train.run_dir = run_dir("manifest");
  Trainer t(c, {world(), torch::kCPU});
  auto r = t.compute_gradients();
  t.apply_update(r);
  t.save_checkpoint();
  const std::string good = c.train.run_dir + "/checkpoints/" + checkpoint_dir_name(1);
  const std::string copy = c.train.run_dir + "/edited/" + checkpoint_dir_name(1);
  struct Edit {
    const char* what;
    std::function<void(proto::CheckpointManifest&)> edit;
  };
  const std::vector<Edit> edits = {
      {"field step is 2 but the directory is step_00000001", [](auto& m) { m.set_step(2); }},
      {"field step is 9223372036854775807", [](auto& m) { m.set_step(std::numeric_limits<int64_t>::max()); }},
      {"field skipped_steps", [](auto& m) { m.set_skipped_steps(5); }},
      {"field tokens_seen", [](auto& m) { m.set_tokens_seen(0); }},
      {"field world_size/expert_parallel", [](auto& m) { m.set_expert_parallel(m.world_size() + 1); }},
      {"field placement", [](auto& m) { m.mutable_placement(0)->set_owner(0, 7); }},
      {"field tensors lists file '../rank_0.bin'", [](auto& m) { m.mutable_tensors(0)->set_file("../rank_0.bin"); }},
  };
  for (const auto& e : edits) {
    if (world()->rank() == 0) {
      core::remove_tree(fs::path(copy).parent_path());
      fs::create_directories(fs::path(copy).parent_path());
      fs::copy(good, copy, fs::copy_options::recursive);
      edit_manifest(copy, e.edit);
    }
    world()->barrier();
    try {
      read_manifest(copy);
      ADD_FAILURE() << "accepted: " << e.what;
    } catch (const CheckpointError& err) {
      EXPECT_NE(std::string(err.what()).find(e.what), std::string::npos) << err.what();
      EXPECT_NE(std::string(err.what()).find("manifest.pb"), std::string::npos) << err.what();
    }
    world()->barrier();
  }
  // A checkpoint of another data order (train.seed) is refused by the run, naming the key.
  if (world()->rank() == 0) {
    core::remove_tree(fs::path(copy).parent_path());
    fs::create_directories(fs::path(copy).parent_path());
    fs::copy(good, copy, fs::copy_options::recursive);
    edit_manifest(copy, [](auto& m) { m.set_data_seed(m.data_seed() + 1); });
  }
  world()->barrier();
  try {
    t.load_checkpoint(copy);
    ADD_FAILURE() << "a checkpoint of another train.seed was accepted";
  } catch (const CheckpointError& err) {
    EXPECT_NE(std::string(err.what()).find("train.seed"), std::string::npos) << err.what();
  }
}

}  // namespace
}  // namespace switchyard::trainer
