// Config loading: every bound and cross-field rule names its key; unknown keys are rejected with a
// suggestion; YAML and --set errors are clear; the dump loads back to the same config.
#include "core/config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace switchyard::core {
namespace {

/// Loads and returns the ConfigError text, failing the test if loading succeeds.
std::string load_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    load_config_text(yaml, overrides, "test.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ConfigError for:\n" << yaml;
  return "";
}

std::string world_error(const std::vector<std::string>& overrides, int world_size) {
  const Config c = load_config_text("", overrides);
  try {
    c.validate_for_world(world_size);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a ConfigError at world size " << world_size;
  return "";
}

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << "in: " << (text)

TEST(Config, DefaultsAreValid) {
  const Config c = load_config_text("");
  EXPECT_EQ(c.model.moe.num_experts, 8);
  EXPECT_EQ(c.model.moe.router.kind, RouterKind::kTopK);
  EXPECT_NO_THROW(c.validate_for_world(1));
  EXPECT_NO_THROW(c.validate_for_world(2));
}

TEST(Config, ReadsNestedValuesOfEveryType) {
  const Config c = load_config_text(R"(
model:
  d_model: 64
  tie_embeddings: false
  moe: {num_experts: 16, top_k: 1, router: {kind: sigmoid_bias, bias_update_rate: 0.002}}
losses: {z_loss: 0.0}
parallel: {placement: plan.yaml, dispatcher: hierarchical}
)");
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_FALSE(c.model.tie_embeddings);
  EXPECT_EQ(c.model.moe.num_experts, 16);
  EXPECT_EQ(c.model.moe.router.kind, RouterKind::kSigmoidBias);
  EXPECT_DOUBLE_EQ(c.model.moe.router.bias_update_rate, 0.002);
  EXPECT_DOUBLE_EQ(c.losses.z_loss, 0.0);
  EXPECT_EQ(c.parallel.placement, "plan.yaml");
  EXPECT_EQ(c.parallel.dispatcher, DispatcherKind::kHierarchical);
}

// ---- Every numeric field's bounds, found by visiting the schema itself. ----

struct NumericField {
  std::string path;
  Bounds bounds;
  bool integral;
};

class CollectNumeric {
 public:
  std::vector<NumericField> fields;
  template <class T>
  void field(const char* key, T&, const char*, Bounds b = Bounds::any()) {
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      fields.push_back({prefix_ + key, b, std::is_integral_v<T>});
    }
  }
  template <class S>
  void section(const char* key, S& sub) {
    const std::string saved = prefix_;
    prefix_ += std::string(key) + ".";
    sub.visit(*this);
    prefix_ = saved;
  }

 private:
  std::string prefix_;
};

std::vector<NumericField> numeric_fields() {
  Config c;
  CollectNumeric v;
  c.visit(v);
  return v.fields;
}

TEST(Config, EveryBoundNamesItsKeyAndValue) {
  const auto fields = numeric_fields();
  ASSERT_GT(fields.size(), 40u);
  for (const auto& f : fields) {
    std::vector<std::string> bad;
    if (std::isfinite(f.bounds.lo)) bad.push_back(std::to_string(static_cast<long long>(std::floor(f.bounds.lo)) - 1));
    if (f.bounds.lo_open) bad.push_back(f.integral ? std::to_string(static_cast<long long>(f.bounds.lo)) : "0.0");
    if (std::isfinite(f.bounds.hi)) bad.push_back(std::to_string(static_cast<long long>(std::ceil(f.bounds.hi)) + 1));
    for (const auto& value : bad) {
      if (f.bounds.lo_open && value == "0.0" && f.bounds.lo != 0.0) continue;
      const std::string msg = load_error("", {f.path + "=" + value});
      EXPECT_HAS(msg, f.path + ": must be ");
      EXPECT_HAS(msg, "got " + value);
    }
  }
}

TEST(Config, WrongTypeNamesKey) {
  EXPECT_HAS(load_error("model: {d_model: wide}"), "model.d_model: expected an integer, got 'wide'");
  EXPECT_HAS(load_error("model: {d_model: 12.5}"), "model.d_model: expected an integer");
  EXPECT_HAS(load_error("train: {lr: fast}"), "train.lr: expected a number, got 'fast'");
  EXPECT_HAS(load_error("model: {tie_embeddings: maybe}"), "model.tie_embeddings: expected true or false");
  EXPECT_HAS(load_error("model: {d_model: [1, 2]}"), "model.d_model: expected an integer, got a list");
  EXPECT_HAS(load_error("model: {moe: {router: {kind: top2}}}"),
             "model.moe.router.kind: expected one of topk, sigmoid_bias");
  EXPECT_HAS(load_error("model: 3"), "model: expected a mapping of keys, got '3'");
  EXPECT_HAS(load_error("- a\n- b\n"), "expected a mapping of sections at the top level");
}

TEST(Config, NonFiniteNumbersAreRejected) {
  EXPECT_HAS(load_error("train: {lr: .nan}"), "train.lr: must be");
  EXPECT_HAS(load_error("model: {rope_theta: .inf}"), "model.rope_theta: must be");
}

TEST(Config, UnknownKeySuggestsClosest) {
  EXPECT_HAS(load_error("model: {moe: {topk: 2}}"), "model.moe.topk: unknown key (did you mean 'model.moe.top_k'?)");
  EXPECT_HAS(load_error("trian: {steps: 3}"), "trian: unknown key (did you mean 'train'?)");
  const std::string far = load_error("model: {flux_capacitor: 1}");
  EXPECT_HAS(far, "model.flux_capacitor: unknown key");
  EXPECT_EQ(far.find("did you mean"), std::string::npos);
}

TEST(Config, AKeyThatIsNotANameIsRefused) {
  // Found by fuzz.config: a flow map used as a key leaked yaml-cpp's bad-conversion exception.
  EXPECT_HAS(load_error("model:\n  d_model: 64\n  {expert_parallel: 2}: 1\n"), "model: a key that is not a name");
  EXPECT_HAS(load_error("[1, 2]: 3\n"), "config: a key that is not a name");
}

TEST(Config, MalformedYamlNamesFileAndLine) {
  EXPECT_HAS(load_error("model:\n  d_model: 3\n  moe: {num_experts: 4\n"), "test.yaml:");
  EXPECT_HAS(load_error("model:\n  d_model: [1,\n"), "malformed YAML");
}

TEST(Config, MissingFileIsNamed) {
  try {
    load_config("/nonexistent/switchyard.yaml");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_HAS(e.what(), "/nonexistent/switchyard.yaml: cannot open config file");
  }
}

TEST(Config, OverridesApplyInOrderWithTypes) {
  const Config c = load_config_text("model: {d_model: 64}",
                                    {"model.d_model=256", "model.moe.router.kind=cosine", "train.lr=1e-4",
                                     "model.tie_embeddings=false", "data.path=a b.txt", "model.d_model=96"});
  EXPECT_EQ(c.model.d_model, 96);
  EXPECT_EQ(c.model.moe.router.kind, RouterKind::kCosine);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-4);
  EXPECT_FALSE(c.model.tie_embeddings);
  EXPECT_EQ(c.data.path, "a b.txt");
}

TEST(Config, BadOverridesAreNamed) {
  EXPECT_HAS(load_error("", {"model.d_model"}), "--set 'model.d_model': expected key.path=value");
  EXPECT_HAS(load_error("", {"=3"}), "--set '=3': expected key.path=value");
  EXPECT_HAS(load_error("", {"model..d_model=3"}), "empty component");
  EXPECT_HAS(load_error("model: {d_model: 64}", {"model.d_model.x=3"}),
             "--set model.d_model.x: 'model.d_model' is a value, not a section");
  EXPECT_HAS(load_error("", {"model.d_model.x=3"}), "model.d_model: expected an integer, got a mapping");
  EXPECT_HAS(load_error("", {"model.dmodel=3"}), "model.dmodel: unknown key (did you mean 'model.d_model'?)");
  EXPECT_HAS(load_error("", {"model.d_model=[1,"}), "model.d_model: expected an integer, got '[1,'");
}

// ---- One test per cross-field rule; each message names the key at fault. ----

TEST(ConfigRule, HeadsDivideWidth) {
  EXPECT_HAS(load_error("", {"model.d_model=128", "model.n_heads=3"}), "model.n_heads: must divide model.d_model");
}
TEST(ConfigRule, HeadWidthEvenForRope) {
  EXPECT_HAS(load_error("", {"model.d_model=12", "model.n_heads=4"}), "model.n_heads: head width");
  EXPECT_HAS(load_error("", {"model.head_dim=7"}), "model.head_dim: head width must be even for RoPE, got 7");
  // With head_dim set, n_heads need not divide d_model (Qwen3: 32 heads of 128 on d_model 2048).
  EXPECT_NO_THROW(load_config_text("", {"model.d_model=24", "model.n_heads=5", "model.head_dim=8"}, "test.yaml"));
}
TEST(ConfigRule, ResetAtEodNeedsTheToken) {
  EXPECT_HAS(load_error("", {"data.reset_at_eod=true"}), "data.eod_id: data.reset_at_eod needs the end-of-document token");
  EXPECT_HAS(load_error("", {"data.reset_at_eod=true", "data.eod_id=256"}), "in [0, model.vocab_size 256), got 256");
  EXPECT_NO_THROW(load_config_text("", {"data.reset_at_eod=true", "data.eod_id=2"}, "test.yaml"));
}
TEST(ConfigRule, FamilyNamesTheKeyItCannotExpress) {
  EXPECT_HAS(load_error("", {"model.family=mixtral", "model.qk_norm=head"}),
             "model.qk_norm: model.family mixtral is none, got head");
  EXPECT_HAS(load_error("", {"model.family=olmoe"}), "model.qk_norm: model.family olmoe is full, got none");
  EXPECT_NO_THROW(load_config_text("", {"model.family=qwen3_moe", "model.qk_norm=head", "model.moe.every=2"}, "test.yaml"));
}
TEST(ConfigRule, TopKAtMostExperts) {
  EXPECT_HAS(load_error("", {"model.moe.num_experts=4", "model.moe.top_k=5"}),
             "model.moe.top_k: must be <= model.moe.num_experts (4), got 5");
}
TEST(ConfigRule, MoeEveryAtMostLayers) {
  EXPECT_HAS(load_error("", {"model.n_layers=2", "model.moe.every=3"}), "model.moe.every: must be <= model.n_layers");
}
TEST(ConfigRule, ExpertParallelDividesExperts) {
  EXPECT_HAS(load_error("", {"model.moe.num_experts=6", "parallel.expert_parallel=4"}),
             "parallel.expert_parallel: must divide model.moe.num_experts (6), got 4");
}
TEST(ConfigRule, BilevelGroupsDivideExperts) {
  EXPECT_HAS(load_error("", {"model.moe.router.kind=bilevel", "model.moe.router.groups=3"}),
             "model.moe.router.groups: must divide model.moe.num_experts");
}
TEST(ConfigRule, BilevelTopKWithinGroup) {
  EXPECT_HAS(load_error("", {"model.moe.router.kind=bilevel", "model.moe.router.groups=8", "model.moe.top_k=2"}),
             "model.moe.top_k: bilevel picks top_k experts inside one group of 1");
}
TEST(ConfigRule, GrapExpertsDivideWidth) {
  EXPECT_HAS(load_error("", {"model.moe.router.kind=grap", "model.moe.num_experts=6", "model.moe.top_k=1"}),
             "model.moe.num_experts: grap needs it to divide model.d_model");
}
TEST(ConfigRule, TopPKMaxAtMostExperts) {
  EXPECT_HAS(load_error("", {"model.moe.router.kind=top_p", "model.moe.router.k_max=9"}),
             "model.moe.router.k_max: must be <= model.moe.num_experts");
}
TEST(ConfigRule, ExpertChoiceNeedsCapacity) {
  EXPECT_HAS(load_error("", {"model.moe.router.kind=expert_choice"}),
             "model.moe.capacity_factor: expert_choice needs a capacity");
}
TEST(ConfigRule, NullExpertsNeedTokenChoiceRouter) {
  EXPECT_HAS(load_error("", {"model.moe.null_experts=2", "model.moe.router.kind=hash"}),
             "model.moe.null_experts: only topk");
}
TEST(ConfigRule, ContrastiveNeedsCosineRouter) {
  EXPECT_HAS(load_error("", {"losses.contrastive=0.1"}), "losses.contrastive: needs model.moe.router.kind cosine");
}
TEST(ConfigRule, GlobalBatchBalanceNotForBilevel) {
  EXPECT_HAS(load_error("", {"model.moe.router.kind=bilevel", "model.moe.top_k=1",
                             "losses.load_balance_scope=global_batch"}),
             "losses.load_balance_scope: global_batch is not available for router.kind bilevel");
}
TEST(ConfigRule, GlobalBatchMultipleOfMicroBatch) {
  EXPECT_HAS(load_error("", {"train.global_batch=10", "train.micro_batch=4"}),
             "train.global_batch: must be a multiple of train.micro_batch (4), got 10");
}
TEST(ConfigRule, FileSourcesNeedPath) {
  EXPECT_HAS(load_error("", {"data.source=megatron"}), "data.path: data.source megatron needs a path");
}
TEST(ConfigRule, TextSourceNeedsByteVocab) {
  EXPECT_HAS(load_error("", {"data.source=text", "data.path=x.txt", "model.vocab_size=100"}),
             "model.vocab_size: the byte tokenizer");
}
TEST(ConfigRule, Bf16NeedsCuda) {
  EXPECT_HAS(load_error("", {"train.precision=bf16"}), "train.precision: bf16 needs train.device cuda");
}
TEST(ConfigRule, NcclNeedsCuda) {
  EXPECT_HAS(load_error("", {"parallel.backend=nccl"}), "parallel.backend: nccl needs train.device cuda");
}
TEST(ConfigRule, ExpertParallelDividesWorld) {
  EXPECT_HAS(world_error({"parallel.expert_parallel=4"}, 6),
             "parallel.expert_parallel: must divide the number of ranks (6), got 4");
}
TEST(ConfigRule, GlobalBatchSplitsOverRanks) {
  EXPECT_HAS(world_error({"train.global_batch=16", "train.micro_batch=4"}, 8),
             "train.global_batch: must be a multiple of train.micro_batch * ranks (4 * 8), got 16");
}
TEST(ConfigRule, RanksPerNodeDividesWorld) {
  EXPECT_HAS(world_error({"parallel.ranks_per_node=3"}, 4), "parallel.ranks_per_node: must divide the number of ranks");
}

// ---- Round trip ----

TEST(Config, DumpLoadsBackToTheSameConfig) {
  const std::vector<std::string> overrides = {
      "model.d_model=96", "model.n_heads=3", "model.moe.router.kind=bilevel", "model.moe.router.groups=4",
      "model.moe.top_k=2", "train.lr=0.1", "losses.z_loss=1e-7", "data.path=some \"quoted\" path: x",
      "model.moe.capacity_factor=1.25", "parallel.placement=", "train.seed=0", "model.norm_eps=3.3e-9"};
  const Config a = load_config_text("", overrides);
  const std::string dumped = dump_config(a);
  const Config b = load_config_text(dumped, {}, "dump");
  EXPECT_EQ(dumped, dump_config(b));
  EXPECT_EQ(b.data.path, "some \"quoted\" path: x");
  EXPECT_DOUBLE_EQ(b.losses.z_loss, 1e-7);
  EXPECT_EQ(b.train.lr, 0.1);
  EXPECT_EQ(b.model.norm_eps, 3.3e-9);
  EXPECT_EQ(b.model.moe.router.kind, RouterKind::kBilevel);
}

TEST(Config, DumpOfDefaultsLoadsToDefaults) {
  const Config defaults;
  const Config loaded = load_config_text(dump_config(defaults));
  EXPECT_EQ(dump_config(loaded), dump_config(defaults));
}

TEST(Config, MoeLayerPlacement) {
  const Config c = load_config_text("", {"model.n_layers=6", "model.moe.every=2"});
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(5));
  EXPECT_EQ(c.num_moe_layers(), 3);
}

}  // namespace
}  // namespace switchyard::core
