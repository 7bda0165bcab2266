// config.json mapping. Field names and defaults: each family's configuration class in transformers
// (MixtralConfig, Qwen3MoeConfig, OlmoeConfig, LlamaConfig, Qwen3Config).
#include "interop/hf_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>

#include "core/error.h"

namespace switchyard::interop {
namespace {

using json = nlohmann::json;

const char* architecture_of(core::ModelFamily family) {
  switch (family) {
    case core::ModelFamily::kMixtral: return "MixtralForCausalLM";
    case core::ModelFamily::kQwen3Moe: return "Qwen3MoeForCausalLM";
    case core::ModelFamily::kOlmoe: return "OlmoeForCausalLM";
    default: throw ConfigError("model.family: custom has no Hugging Face architecture");
  }
}

/// Typed reads of config.json keys with the family's default, each error naming file and key.
class Fields {
 public:
  Fields(const json& j, std::string path) : j_(j), path_(std::move(path)) {}
  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw DataError(path_ + ": " + key + ": " + why);
  }
  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  int64_t integer(const std::string& key, std::optional<int64_t> fallback = std::nullopt) const {
    if (!has(key)) {
      if (!fallback) fail(key, "missing");
      return *fallback;
    }
    const auto& v = j_.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0) fail(key, "expected a non-negative integer, got " + v.dump());
    return v.get<int64_t>();
  }
  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    const auto& v = j_.at(key);
    if (!v.is_number()) fail(key, "expected a number, got " + v.dump());
    return v.get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    const auto& v = j_.at(key);
    if (!v.is_boolean()) fail(key, "expected true or false, got " + v.dump());
    return v.get<bool>();
  }
  std::string text(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const auto& v = j_.at(key);
    if (!v.is_string()) fail(key, "expected a string, got " + v.dump());
    return v.get<std::string>();
  }
  /// `key` must be absent, null or `allowed`.
  void refuse_unless(const std::string& key, const json& allowed, const std::string& why) const {
    if (has(key) && j_.at(key) != allowed) fail(key, j_.at(key).dump() + ": " + why);
  }
  const json& at(const std::string& key) const { return j_.at(key); }

 private:
  const json& j_;
  std::string path_;
};

}  // namespace

std::string hf_config_json(const core::ModelConfig& model, const core::LossesConfig& losses, core::ModelFamily family,
                           const std::string& dtype) {
  const auto& moe = model.moe;
  json j;
  j["architectures"] = {architecture_of(family)};
  j["vocab_size"] = model.vocab_size;
  j["hidden_size"] = model.d_model;
  j["num_hidden_layers"] = model.n_layers;
  j["num_attention_heads"] = model.n_heads;
  j["num_key_value_heads"] = model.kv_heads();
  j["head_dim"] = model.head_width();
  j["max_position_embeddings"] = model.seq_len;
  j["rms_norm_eps"] = model.norm_eps;
  // rope_theta as transformers 4.x reads it; rope_parameters as 5.x does.
  j["rope_theta"] = model.rope_theta;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", model.rope_theta}};
  j["rope_scaling"] = nullptr;
  j["tie_word_embeddings"] = model.tie_embeddings;
  j["hidden_act"] = "silu";
  j["initializer_range"] = model.init_std;
  j["attention_dropout"] = 0.0;
  j["num_experts_per_tok"] = moe.top_k;
  j["router_aux_loss_coef"] = losses.load_balance;
  j["output_router_logits"] = false;
  j["use_cache"] = true;
  j["torch_dtype"] = dtype;  // transformers 4.x; 5.x reads dtype
  j["dtype"] = dtype;
  switch (family) {
    case core::ModelFamily::kMixtral:
      j["model_type"] = "mixtral";
      j["intermediate_size"] = moe.ffn_hidden;
      j["num_local_experts"] = moe.num_experts;
      j["sliding_window"] = nullptr;
      j["router_jitter_noise"] = 0.0;
      break;
    case core::ModelFamily::kQwen3Moe:
      j["model_type"] = "qwen3_moe";
      j["intermediate_size"] = model.dense_ffn_hidden;
      j["moe_intermediate_size"] = moe.ffn_hidden;
      j["num_experts"] = moe.num_experts;
      j["norm_topk_prob"] = moe.router.normalize_topk;
      j["decoder_sparse_step"] = moe.every;
      j["mlp_only_layers"] = json::array();
      j["attention_bias"] = false;
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      j["max_window_layers"] = model.n_layers;
      break;
    case core::ModelFamily::kOlmoe:
      j["model_type"] = "olmoe";
      j["intermediate_size"] = moe.ffn_hidden;
      j["num_experts"] = moe.num_experts;
      j["norm_topk_prob"] = moe.router.normalize_topk;
      j["clip_qkv"] = nullptr;
      j["attention_bias"] = false;
      j["router_z_loss_coef"] = losses.z_loss;
      break;
    default:
      architecture_of(family);  // throws
  }
  return j.dump(2) + "\n";
}

HfArchitecture parse_hf_config(const std::string& text, const std::string& path, int64_t seq_len) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) throw DataError(path + ": not a JSON object (a Hugging Face config.json)");
  const Fields f(j, path);
  HfArchitecture a;
  a.model_type = f.text("model_type", "");
  const auto& t = a.model_type;
  const bool mixtral = t == "mixtral", qwen3_moe = t == "qwen3_moe", olmoe = t == "olmoe";
  const bool llama = t == "llama", qwen3 = t == "qwen3";
  if (!(mixtral || qwen3_moe || olmoe || llama || qwen3)) {
    f.fail("model_type", "'" + t + "' is not an architecture Switchyard represents (mixtral, qwen3_moe, olmoe; "
                         "llama and qwen3 to upcycle)");
  }
  a.dense = llama || qwen3;
  auto& m = a.model;
  m.family = (mixtral || llama) ? core::ModelFamily::kMixtral
             : (qwen3_moe || qwen3) ? core::ModelFamily::kQwen3Moe
                                    : core::ModelFamily::kOlmoe;
  m.qk_norm = (qwen3_moe || qwen3) ? core::QkNorm::kHead : olmoe ? core::QkNorm::kFull : core::QkNorm::kNone;
  m.vocab_size = f.integer("vocab_size");
  m.d_model = f.integer("hidden_size");
  m.n_layers = f.integer("num_hidden_layers");
  m.n_heads = f.integer("num_attention_heads");
  if (m.n_heads == 0) f.fail("num_attention_heads", "must be positive");
  m.n_kv_heads = f.integer("num_key_value_heads", m.n_heads);
  const int64_t head_dim = f.integer("head_dim", m.d_model / m.n_heads);
  m.head_dim = head_dim * m.n_heads == m.d_model ? 0 : head_dim;
  const int64_t positions = f.integer("max_position_embeddings", 4096);
  m.seq_len = seq_len > 0 ? seq_len : std::min<int64_t>(positions, 4096);
  m.norm_eps = f.number("rms_norm_eps", (mixtral || olmoe) ? 1e-5 : 1e-6);
  double theta = f.number("rope_theta", mixtral ? 1e6 : 1e4);
  if (f.has("rope_parameters")) {
    const auto& rp = f.at("rope_parameters");
    if (!rp.is_object()) f.fail("rope_parameters", "expected an object");
    const Fields r(rp, path + ": rope_parameters");
    r.refuse_unless("rope_type", "default", "only plain RoPE is represented (no scaling)");
    theta = r.number("rope_theta", theta);
  }
  m.rope_theta = theta;
  f.refuse_unless("rope_scaling", nullptr, "RoPE scaling is not represented");
  m.tie_embeddings = f.boolean("tie_word_embeddings", false);
  m.init_std = f.number("initializer_range", 0.02);
  if (m.init_std <= 0) m.init_std = 0.02;
  f.refuse_unless("hidden_act", "silu", "only SwiGLU (silu) MLPs are represented");
  f.refuse_unless("attention_bias", false, "attention biases are not represented");
  f.refuse_unless("mlp_bias", false, "MLP biases are not represented");
  f.refuse_unless("clip_qkv", nullptr, "QKV clipping is not represented");
  if (f.boolean("use_sliding_window", false)) f.fail("use_sliding_window", "sliding-window attention is not represented");
  if (f.has("sliding_window") && !qwen3_moe && !qwen3 && f.integer("sliding_window") < m.seq_len) {
    f.fail("sliding_window", "a window of " + std::to_string(f.integer("sliding_window")) +
                                 " tokens under model.seq_len " + std::to_string(m.seq_len) + " is not represented");
  }
  auto& moe = m.moe;
  moe.capacity_factor = 0.0;  // dropless, as every one of these families
  moe.every = 1;
  if (a.dense) {
    moe.ffn_hidden = f.integer("intermediate_size");
    m.dense_ffn_hidden = moe.ffn_hidden;
    moe.router.normalize_topk = true;  // upcycled: the k gates sum to 1, so step 0 equals the dense model
    return a;
  }
  if (mixtral) {
    moe.num_experts = f.integer("num_local_experts", 8);
    moe.top_k = f.integer("num_experts_per_tok", 2);
    moe.ffn_hidden = f.integer("intermediate_size", 14336);
    moe.router.normalize_topk = true;
  } else {
    // transformers 5 saves Qwen3-MoE's count as num_local_experts (its attribute_map of num_experts).
    moe.num_experts = f.integer(f.has("num_experts") ? "num_experts" : "num_local_experts", qwen3_moe ? 128 : 64);
    moe.top_k = f.integer("num_experts_per_tok", 8);
    moe.router.normalize_topk = f.boolean("norm_topk_prob", false);
    if (qwen3_moe) {
      moe.ffn_hidden = f.integer("moe_intermediate_size", 768);
      m.dense_ffn_hidden = f.integer("intermediate_size", 6144);
      moe.every = f.integer("decoder_sparse_step", 1);
      if (f.has("mlp_only_layers") && !(f.at("mlp_only_layers").is_array() && f.at("mlp_only_layers").empty())) {
        f.fail("mlp_only_layers", "dense layers are represented only every decoder_sparse_step layers");
      }
    } else {
      moe.ffn_hidden = f.integer("intermediate_size", 1024);
    }
  }
  a.losses.load_balance = f.number("router_aux_loss_coef", a.losses.load_balance);
  a.losses.z_loss = f.number("router_z_loss_coef", olmoe ? a.losses.z_loss : 0.0);
  return a;
}

}  // namespace switchyard::interop
