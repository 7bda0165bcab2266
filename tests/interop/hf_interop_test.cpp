// Hugging Face export, import and upcycling on the CPU: exact round trips per family, the layouts
// transformers 5 saves, upcycling equal to the dense model at step 0, and refusals naming the file and
// the key or tensor (issue 21). Logits against transformers itself: tests/interop/hf_parity.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "core/file_io.h"
#include "core/error.h"
#include "interop/hf_checkpoint.h"
#include "interop/hf_config.h"
#include "interop/hf_weights.h"
#include "interop/safetensors.h"
#include "tests/test_util.h"
#include "trainer/checkpoint.h"

namespace switchyard::interop {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string temp_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("sy_hf_" + name + "_" + std::to_string(::getpid()));
  core::remove_tree(dir);
  fs::create_directories(dir);
  return dir.string();
}

core::Config tiny(core::ModelFamily family) {
  core::Config c;
  auto& m = c.model;
  m.family = family;
  m.vocab_size = 64;
  m.d_model = 32;
  m.n_layers = 3;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.seq_len = 16;
  m.tie_embeddings = false;
  m.dense_ffn_hidden = 24;
  m.moe.num_experts = 4;
  m.moe.top_k = 2;
  m.moe.ffn_hidden = 16;
  m.moe.capacity_factor = 0;
  if (family == core::ModelFamily::kQwen3Moe) {
    m.qk_norm = core::QkNorm::kHead;
    m.head_dim = 12;  // q width 48 != d_model 32, as Qwen3's head_dim 128
    m.moe.every = 2;  // a dense layer between MoE ones (decoder_sparse_step)
  }
  if (family == core::ModelFamily::kOlmoe) {
    m.qk_norm = core::QkNorm::kFull;
    m.moe.router.normalize_topk = false;
    m.tie_embeddings = true;
  }
  c.validate();
  return c;
}

/// A model of `config` whose every parameter is random (norm weights too, so a swapped norm shows).
modules::TransformerLM random_model(const core::Config& config, uint64_t seed) {
  modules::TransformerLM model(config.model, config.losses, seed);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.copy_(torch::randn(p.sizes()) * 0.2 + (p.dim() == 1 ? 1.0 : 0.0));
  return model;
}

torch::Tensor logits_of(modules::TransformerLM& model, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  model->eval();
  return model->forward(tokens).logits;
}

/// A Switchyard weights-only checkpoint of `model` in `dir`.
std::string save(const std::string& dir, const core::Config& config, modules::TransformerLM& model) {
  trainer::write_weights_checkpoint(dir, core::dump_config(config), *model);
  return dir;
}

class FamilyRoundTrip : public ::testing::TestWithParam<core::ModelFamily> {};

TEST_P(FamilyRoundTrip, ExportThenImportGivesTheSameParametersAndLogits) {
  const auto family = GetParam();
  const auto config = tiny(family);
  const auto dir = temp_dir(std::string("roundtrip_") + core::enum_name(family));
  auto model = random_model(config, 3);
  save(dir + "/ckpt", config, model);
  const auto exported = export_hf(dir + "/ckpt", dir + "/hf", {});
  EXPECT_EQ(exported.family, family);

  // The family's own names, shapes and config.json.
  const HfCheckpoint hf(dir + "/hf");
  const auto cfg = json::parse(hf.config_text());
  const int64_t f = 16, d = 32;
  if (family == core::ModelFamily::kMixtral) {
    EXPECT_EQ(cfg["architectures"][0], "MixtralForCausalLM");
    EXPECT_EQ(hf.tensor("model.layers.0.block_sparse_moe.experts.3.w1.weight").sizes(), (std::vector<int64_t>{f, d}));
    EXPECT_EQ(hf.tensor("model.layers.2.block_sparse_moe.experts.0.w2.weight").sizes(), (std::vector<int64_t>{d, f}));
    EXPECT_EQ(hf.tensor("model.layers.1.block_sparse_moe.gate.weight").sizes(), (std::vector<int64_t>{4, d}));
    EXPECT_EQ(cfg["num_local_experts"], 4);
  } else if (family == core::ModelFamily::kQwen3Moe) {
    EXPECT_EQ(cfg["architectures"][0], "Qwen3MoeForCausalLM");
    EXPECT_EQ(cfg["decoder_sparse_step"], 2);
    EXPECT_EQ(cfg["head_dim"], 12);
    EXPECT_EQ(hf.tensor("model.layers.0.mlp.gate_proj.weight").sizes(), (std::vector<int64_t>{24, d}));  // dense layer
    EXPECT_EQ(hf.tensor("model.layers.1.mlp.experts.2.up_proj.weight").sizes(), (std::vector<int64_t>{f, d}));
    EXPECT_EQ(hf.tensor("model.layers.1.self_attn.q_proj.weight").sizes(), (std::vector<int64_t>{48, d}));
    EXPECT_EQ(hf.tensor("model.layers.1.self_attn.o_proj.weight").sizes(), (std::vector<int64_t>{d, 48}));
    EXPECT_EQ(hf.tensor("model.layers.0.self_attn.q_norm.weight").sizes(), (std::vector<int64_t>{12}));
  } else {
    EXPECT_EQ(cfg["architectures"][0], "OlmoeForCausalLM");
    EXPECT_EQ(cfg["norm_topk_prob"], false);
    EXPECT_EQ(hf.tensor("model.layers.0.self_attn.q_norm.weight").sizes(), (std::vector<int64_t>{32}));
    EXPECT_EQ(hf.tensor("model.layers.0.self_attn.k_norm.weight").sizes(), (std::vector<int64_t>{16}));
    EXPECT_FALSE(hf.has("lm_head.weight"));  // tied
  }
  // The Qwen3 / OLMoE gate projection of expert 1 is the first half of its fused w_in, transposed.
  if (family != core::ModelFamily::kMixtral) {
    const auto w_in = model->named_parameters()["blocks.1.moe.experts.w_in"];
    EXPECT_TRUE(torch::equal(hf.tensor("model.layers.1.mlp.experts.1.gate_proj.weight"), w_in[1].narrow(1, 0, f).t()));
  }

  const auto imported = import_hf(dir + "/hf", dir + "/imported.yaml", dir + "/imported", {});
  EXPECT_EQ(imported.config.model.family, family);
  EXPECT_EQ(core::dump_config(imported.config).find("family: " + std::string(core::enum_name(family))) != std::string::npos, true);
  modules::TransformerLM back(imported.config.model, imported.config.losses, 99);
  trainer::load_weights(dir + "/imported", *back);
  auto ours = model->named_parameters(), theirs = back->named_parameters();
  ASSERT_EQ(ours.size(), theirs.size());
  for (const auto& item : ours) EXPECT_TRUE(torch::equal(item.value(), theirs[item.key()])) << item.key();
  const auto tokens = torch::randint(64, {2, 16});
  EXPECT_TRUE(torch::equal(logits_of(model, tokens), logits_of(back, tokens)));

  // bf16 export: every parameter is the original rounded to bf16.
  export_hf(dir + "/ckpt", dir + "/hf16", {core::ModelFamily::kCustom, torch::kBFloat16, 1000});  // sharded too
  EXPECT_TRUE(fs::exists(dir + "/hf16/model.safetensors.index.json"));
  import_hf(dir + "/hf16", dir + "/imported16.yaml", dir + "/imported16", {});
  modules::TransformerLM back16(imported.config.model, imported.config.losses, 99);
  trainer::load_weights(dir + "/imported16", *back16);
  for (const auto& item : ours) {
    EXPECT_TRUE(torch::equal(item.value().to(torch::kBFloat16).to(torch::kFloat32), back16->named_parameters()[item.key()]))
        << item.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyRoundTrip,
                         ::testing::Values(core::ModelFamily::kMixtral, core::ModelFamily::kQwen3Moe, core::ModelFamily::kOlmoe),
                         [](const auto& info) { return std::string(core::enum_name(info.param)); });

TEST(HfImport, ReadsTheFusedExpertLayoutOfTransformers5) {
  const auto config = tiny(core::ModelFamily::kMixtral);
  const auto dir = temp_dir("fused");
  auto model = random_model(config, 5);
  save(dir + "/ckpt", config, model);
  export_hf(dir + "/ckpt", dir + "/hf", {});
  // Rewrite as transformers 5 keeps Mixtral in memory: mlp.gate, experts.gate_up_proj [E, 2f, d], experts.down_proj [E, d, f].
  const HfCheckpoint legacy(dir + "/hf");
  std::vector<std::pair<std::string, torch::Tensor>> fused;
  for (const auto& name : legacy.names()) {
    if (name.find("block_sparse_moe") == std::string::npos) fused.emplace_back(name, legacy.tensor(name));
  }
  for (int l = 0; l < 3; ++l) {
    const std::string old = "model.layers." + std::to_string(l) + ".block_sparse_moe.", now = "model.layers." + std::to_string(l) + ".mlp.";
    std::vector<torch::Tensor> gate_up, down;
    for (int e = 0; e < 4; ++e) {
      const auto p = old + "experts." + std::to_string(e) + ".";
      gate_up.push_back(torch::cat({legacy.tensor(p + "w1.weight"), legacy.tensor(p + "w3.weight")}, 0));
      down.push_back(legacy.tensor(p + "w2.weight"));
    }
    fused.emplace_back(now + "gate.weight", legacy.tensor(old + "gate.weight"));
    fused.emplace_back(now + "experts.gate_up_proj", torch::stack(gate_up));
    fused.emplace_back(now + "experts.down_proj", torch::stack(down));
  }
  write_hf_checkpoint(dir + "/hf5", fused, legacy.config_text(), 1'000'000'000);
  const auto imported = import_hf(dir + "/hf5", dir + "/i.yaml", dir + "/i", {});
  modules::TransformerLM back(imported.config.model, imported.config.losses, 1);
  trainer::load_weights(dir + "/i", *back);
  for (const auto& item : model->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), back->named_parameters()[item.key()])) << item.key();
  }
}

/// A dense Llama (or Qwen3) checkpoint: the tensors of a one-expert model named as the dense MLP.
std::string write_dense(const std::string& dir, const core::Config& one_expert, modules::TransformerLM& model,
                        const std::string& model_type) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for_each_hf_tensor(*model, one_expert.model, one_expert.model.family, /*dense_source=*/true, [&](const HfBinding& b) {
    tensors.emplace_back(b.name, (b.transposed ? b.view.t() : b.view).contiguous());
  });
  const auto& m = one_expert.model;
  json cfg = {{"model_type", model_type}, {"architectures", {model_type == "llama" ? "LlamaForCausalLM" : "Qwen3ForCausalLM"}},
              {"vocab_size", m.vocab_size}, {"hidden_size", m.d_model}, {"num_hidden_layers", m.n_layers},
              {"num_attention_heads", m.n_heads}, {"num_key_value_heads", m.kv_heads()}, {"head_dim", m.head_width()},
              {"intermediate_size", m.moe.ffn_hidden}, {"max_position_embeddings", m.seq_len}, {"rms_norm_eps", m.norm_eps},
              {"rope_theta", m.rope_theta}, {"tie_word_embeddings", m.tie_embeddings}, {"hidden_act", "silu"},
              {"attention_bias", false}, {"mlp_bias", false}};
  write_hf_checkpoint(dir, tensors, cfg.dump(), 1'000'000'000);
  return dir;
}

TEST(HfUpcycle, AtStepZeroTheMoEEqualsTheDenseModel) {
  for (const std::string type : {"llama", "qwen3"}) {
    auto dense = tiny(type == "llama" ? core::ModelFamily::kMixtral : core::ModelFamily::kQwen3Moe);
    dense.model.moe.every = 1;
    dense.model.moe.num_experts = 1;  // one expert with gate 1: exactly the dense MLP
    dense.model.moe.top_k = 1;
    dense.validate();
    const auto dir = temp_dir("upcycle_" + type);
    auto model = random_model(dense, 7);
    write_dense(dir + "/dense", dense, model, type);
    const auto tokens = torch::randint(64, {3, 16});
    const auto reference = logits_of(model, tokens);

    ImportOptions options;
    options.upcycle = true;
    options.experts = 6;
    options.top_k = 2;
    options.seed = 11;
    const auto up = import_hf(dir + "/dense", dir + "/up.yaml", dir + "/up", options);
    EXPECT_EQ(up.config.model.moe.num_experts, 6);
    modules::TransformerLM moe(up.config.model, up.config.losses, 1);
    trainer::load_weights(dir + "/up", *moe);
    EXPECT_LT(testing::rel_l2(logits_of(moe, tokens), reference), 1e-6) << type;
    // Every expert starts as the MLP; the router does not (it comes from the seed).
    const auto w_in = moe->named_parameters()["blocks.0.moe.experts.w_in"];
    EXPECT_TRUE(torch::equal(w_in[0], w_in[5]));
    EXPECT_GT(moe->named_parameters()["blocks.0.moe.router.weight"].std().item<double>(), 0);

    options.noise = 0.05;
    import_hf(dir + "/dense", dir + "/noisy.yaml", dir + "/noisy", options);
    modules::TransformerLM noisy(up.config.model, up.config.losses, 1);
    trainer::load_weights(dir + "/noisy", *noisy);
    const auto noisy_w = noisy->named_parameters()["blocks.0.moe.experts.w_in"];
    EXPECT_FALSE(torch::equal(noisy_w[0], noisy_w[1]));
    const double drift = testing::rel_l2(noisy_w[0], w_in[0]);
    EXPECT_GT(drift, 0.02);
    EXPECT_LT(drift, 0.08);
  }
}

TEST(HfImport, RefusesWhatItCannotRepresentNamingFileAndKeyOrTensor) {
  const auto config = tiny(core::ModelFamily::kMixtral);
  const auto dir = temp_dir("refuse");
  auto model = random_model(config, 5);
  save(dir + "/ckpt", config, model);
  export_hf(dir + "/ckpt", dir + "/hf", {});
  const HfCheckpoint good(dir + "/hf");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& name : good.names()) tensors.emplace_back(name, good.tensor(name));
  const auto base_cfg = json::parse(good.config_text());

  int n = 0;
  const auto variant = [&](const json& cfg, std::vector<std::pair<std::string, torch::Tensor>> t) {
    const auto d = dir + "/v" + std::to_string(n++);
    write_hf_checkpoint(d, t, cfg.dump(), 1'000'000'000);
    return testing::refusal([&] { import_hf(d, d + ".yaml", d + ".ckpt", {}); });
  };
  const auto with = [&](const std::string& key, const json& value) {
    auto cfg = base_cfg;
    cfg[key] = value;
    return variant(cfg, tensors);
  };
  EXPECT_NE(with("model_type", "gpt2").find("config.json: model_type: 'gpt2' is not an architecture"), std::string::npos);
  EXPECT_NE(with("sliding_window", 8).find("config.json: sliding_window: a window of 8 tokens"), std::string::npos);
  EXPECT_NE(with("rope_scaling", json{{"type", "yarn"}}).find("config.json: rope_scaling:"), std::string::npos);
  EXPECT_NE(with("hidden_act", "gelu").find("config.json: hidden_act: \"gelu\""), std::string::npos);
  EXPECT_NE(with("vocab_size", "big").find("config.json: vocab_size: expected a non-negative integer"), std::string::npos);
  EXPECT_NE(with("num_experts_per_tok", 9).find("model.moe.top_k"), std::string::npos);

  auto missing = tensors;
  missing.erase(std::remove_if(missing.begin(), missing.end(), [](const auto& t) { return t.first == "model.layers.1.self_attn.k_proj.weight"; }),
                missing.end());
  EXPECT_NE(variant(base_cfg, missing).find("missing tensor model.layers.1.self_attn.k_proj.weight"), std::string::npos);
  auto extra = tensors;
  extra.emplace_back("model.layers.0.mlp.shared_expert.up_proj.weight", torch::zeros({2, 2}));
  EXPECT_NE(variant(base_cfg, extra).find("model.safetensors: tensor model.layers.0.mlp.shared_expert.up_proj.weight has no place"),
            std::string::npos);
  auto reshaped = tensors;
  for (auto& [name, t] : reshaped) {
    if (name == "model.norm.weight") t = torch::ones({31});
  }
  EXPECT_NE(variant(base_cfg, reshaped).find("model.safetensors: tensor model.norm.weight has shape [31], config.json implies [32]"),
            std::string::npos);
  auto integer = tensors;
  for (auto& [name, t] : integer) {
    if (name == "model.norm.weight") t = torch::ones({32}, torch::kInt32);
  }
  EXPECT_NE(variant(base_cfg, integer).find("tensor model.norm.weight: dtype Int, expected a floating-point tensor"), std::string::npos);

  ImportOptions upcycle;
  upcycle.upcycle = true;
  EXPECT_NE(testing::refusal([&] { import_hf(dir + "/hf", dir + "/u.yaml", dir + "/u", upcycle); }).find("is an MoE model"), std::string::npos);
}

TEST(HfConfig, ReadsWhatTransformers5Saves) {
  // transformers 5.17's save_pretrained of a Qwen3-MoE: the expert count as num_local_experts, RoPE in
  // rope_parameters only, dtype for torch_dtype (as measured on the GPU machine, docs/interop.md).
  const auto text = R"({"architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "decoder_sparse_step": 2,
    "dtype": "float32", "head_dim": 24, "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 80,
    "max_position_embeddings": 32, "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 32,
    "norm_topk_prob": true, "num_attention_heads": 4, "num_experts_per_tok": 2, "num_hidden_layers": 3,
    "num_key_value_heads": 2, "num_local_experts": 8, "rms_norm_eps": 1e-06,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "router_aux_loss_coef": 0.001,
    "sliding_window": null, "tie_word_embeddings": false, "use_sliding_window": false, "vocab_size": 96})";
  const auto a = parse_hf_config(text, "config.json", 0);
  EXPECT_FALSE(a.dense);
  EXPECT_EQ(a.model.family, core::ModelFamily::kQwen3Moe);
  EXPECT_EQ(a.model.moe.num_experts, 8);
  EXPECT_EQ(a.model.moe.every, 2);
  EXPECT_EQ(a.model.moe.ffn_hidden, 32);
  EXPECT_EQ(a.model.dense_ffn_hidden, 80);
  EXPECT_EQ(a.model.head_dim, 24);
  EXPECT_EQ(a.model.qk_norm, core::QkNorm::kHead);
  EXPECT_DOUBLE_EQ(a.model.rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(a.model.norm_eps, 1e-6);
  EXPECT_EQ(a.model.seq_len, 32);
  EXPECT_TRUE(a.model.moe.router.normalize_topk);
  EXPECT_DOUBLE_EQ(a.losses.load_balance, 0.001);
  EXPECT_THROW(parse_hf_config(R"({"model_type": "mixtral", "rope_parameters": {"rope_type": "yarn"}})", "c.json", 0), DataError);
}

TEST(HfExport, RefusesAModelItsFamilyCannotRepresent) {
  auto config = tiny(core::ModelFamily::kMixtral);
  config.model.family = core::ModelFamily::kCustom;
  config.model.moe.shared_experts = 1;
  const auto dir = temp_dir("export_refuse");
  auto model = random_model(config, 1);
  save(dir + "/ckpt", config, model);
  EXPECT_NE(testing::refusal([&] { export_hf(dir + "/ckpt", dir + "/a", {}); }).find("model.family is custom; pass --family"),
            std::string::npos);
  ExportOptions options;
  options.family = core::ModelFamily::kQwen3Moe;
  EXPECT_NE(testing::refusal([&] { export_hf(dir + "/ckpt", dir + "/b", options); }).find("model.moe.shared_experts: model.family qwen3_moe has none, got 1"),
            std::string::npos);
}

TEST(ModelFamily, ConfigRulesNameTheKey) {
  auto c = tiny(core::ModelFamily::kMixtral);
  c.model.qk_norm = core::QkNorm::kHead;
  EXPECT_EQ(core::family_mismatch(c.model, core::ModelFamily::kMixtral), "model.qk_norm: model.family mixtral is none, got head");
  EXPECT_THROW(c.validate(), ConfigError);
  c = tiny(core::ModelFamily::kOlmoe);
  c.model.moe.every = 2;
  EXPECT_EQ(core::family_mismatch(c.model, core::ModelFamily::kOlmoe),
            "model.moe.every: model.family olmoe has an MoE FFN in every layer (1), got 2");
  c = tiny(core::ModelFamily::kQwen3Moe);
  c.model.moe.router.kind = core::RouterKind::kNoisyTopK;
  EXPECT_EQ(core::family_mismatch(c.model, core::ModelFamily::kQwen3Moe),
            "model.moe.router.kind: model.family qwen3_moe routes by softmax top-k (topk), got noisy_topk");
  c = tiny(core::ModelFamily::kQwen3Moe);
  c.model.moe.capacity_factor = 1.25;
  EXPECT_NE(core::family_mismatch(c.model, core::ModelFamily::kQwen3Moe).find("model.moe.capacity_factor"), std::string::npos);
}

}  // namespace
}  // namespace switchyard::interop
