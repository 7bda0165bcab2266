// Hugging Face tensor naming of Mixtral, Qwen3-MoE and OLMoE (transformers' modeling files), export,
// import and upcycling.
#include "interop/hf_weights.h"

#include <array>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "interop/hf_checkpoint.h"
#include "interop/hf_config.h"
#include "trainer/checkpoint.h"

namespace switchyard::interop {
namespace fs = std::filesystem;
namespace {

std::string layer_prefix(int64_t l) { return "model.layers." + std::to_string(l) + "."; }

/// The MoE block's prefix in a layer: Mixtral's block_sparse_moe, the others' mlp.
std::string moe_prefix(core::ModelFamily family, int64_t l) {
  return layer_prefix(l) + (family == core::ModelFamily::kMixtral ? "block_sparse_moe." : "mlp.");
}

/// Names of an MLP's gate, up and down projections: Mixtral's experts w1, w3, w2; else gate_proj, up_proj, down_proj.
std::array<std::string, 3> mlp_names(bool mixtral_expert) {
  if (mixtral_expert) return {"w1.weight", "w3.weight", "w2.weight"};
  return {"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
}

/// A SwiGLU MLP stored as w_in [d, 2f] (gate | up) and w_out [f, d]: HF's gate and up are [f, d], down [d, f].
void visit_mlp(const std::string& prefix, bool mixtral_expert, const torch::Tensor& w_in, const torch::Tensor& w_out,
               const std::function<void(const HfBinding&)>& fn) {
  const int64_t f = w_out.size(0);
  const auto names = mlp_names(mixtral_expert);
  fn({prefix + names[0], w_in.narrow(1, 0, f), true});
  fn({prefix + names[1], w_in.narrow(1, f, f), true});
  fn({prefix + names[2], w_out, true});
}

torch::Tensor parameter(const std::map<std::string, torch::Tensor>& params, const std::string& name) {
  const auto it = params.find(name);
  SY_ASSERT(it != params.end(), "model has no parameter ", name);
  return it->second;
}

}  // namespace

void for_each_hf_tensor(modules::TransformerLMImpl& model, const core::ModelConfig& config, core::ModelFamily family,
                        bool dense_source, const std::function<void(const HfBinding&)>& fn) {
  std::map<std::string, torch::Tensor> params;
  for (const auto& item : model.named_parameters()) params[item.key()] = item.value();
  const int64_t q_width = config.n_heads * config.head_width(), kv_width = config.kv_heads() * config.head_width();
  fn({"model.embed_tokens.weight", parameter(params, "embedding.weight"), false});
  for (int64_t l = 0; l < config.n_layers; ++l) {
    const std::string ours = "blocks." + std::to_string(l) + ".";
    const std::string hf = layer_prefix(l);
    fn({hf + "input_layernorm.weight", parameter(params, ours + "norm1.weight"), false});
    fn({hf + "post_attention_layernorm.weight", parameter(params, ours + "norm2.weight"), false});
    const auto qkv = parameter(params, ours + "attention.qkv.weight");
    fn({hf + "self_attn.q_proj.weight", qkv.narrow(0, 0, q_width), false});
    fn({hf + "self_attn.k_proj.weight", qkv.narrow(0, q_width, kv_width), false});
    fn({hf + "self_attn.v_proj.weight", qkv.narrow(0, q_width + kv_width, kv_width), false});
    fn({hf + "self_attn.o_proj.weight", parameter(params, ours + "attention.out.weight"), false});
    if (config.qk_norm != core::QkNorm::kNone) {
      fn({hf + "self_attn.q_norm.weight", parameter(params, ours + "attention.q_norm.weight"), false});
      fn({hf + "self_attn.k_norm.weight", parameter(params, ours + "attention.k_norm.weight"), false});
    }
    if (!params.count(ours + "moe.experts.w_in")) {  // a dense layer (Qwen3-MoE between sparse ones)
      visit_mlp(hf + "mlp.", false, parameter(params, ours + "ffn.w_in"), parameter(params, ours + "ffn.w_out"), fn);
      continue;
    }
    const auto w_in = parameter(params, ours + "moe.experts.w_in"), w_out = parameter(params, ours + "moe.experts.w_out");
    const auto moe = moe_prefix(family, l);
    if (!dense_source) fn({moe + "gate.weight", parameter(params, ours + "moe.router.weight"), false});
    for (int64_t e = 0; e < w_in.size(0); ++e) {
      const auto prefix = dense_source ? hf + "mlp." : moe + "experts." + std::to_string(e) + ".";
      visit_mlp(prefix, family == core::ModelFamily::kMixtral && !dense_source, w_in[e], w_out[e], fn);
    }
  }
  fn({"model.norm.weight", parameter(params, "final_norm.weight"), false});
  if (!config.tie_embeddings) fn({"lm_head.weight", parameter(params, "head"), false});
}

namespace {

/// Import's tensor lookup: the file's tensors by HF name, with the layouts transformers 5 saves as
/// well (experts fused as experts.gate_up_proj [E, 2f, d] and experts.down_proj [E, d, f], Mixtral's
/// block_sparse_moe renamed mlp). Records what it used, so that leftovers can be refused.
class TensorLookup {
 public:
  explicit TensorLookup(const HfCheckpoint& source) : source_(source) {}

  /// The tensor `name` as fp32 of `shape`; DataError naming file and tensor otherwise.
  torch::Tensor get(const std::string& name, c10::IntArrayRef shape) {
    auto [t, from] = find(name);
    SY_CHECK_AS(DataError, torch::isFloatingType(t.scalar_type()), source_.file_of(from), ": tensor ", from, ": dtype ",
                c10::toString(t.scalar_type()), ", expected a floating-point tensor");
    SY_CHECK_AS(DataError, t.sizes() == shape, source_.file_of(from), ": tensor ", from, " has shape ", t.sizes(),
                ", config.json implies ", shape);
    return t.to(torch::kFloat32);
  }
  const std::set<std::string>& used() const { return used_; }

 private:
  std::pair<torch::Tensor, std::string> find(const std::string& name) {
    if (source_.has(name)) {
      used_.insert(name);
      return {source_.tensor(name), name};
    }
    static const std::regex router(R"(^(model\.layers\.\d+\.)block_sparse_moe\.gate\.weight$)");
    static const std::regex expert(
        R"(^(model\.layers\.\d+\.)(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w3|w2|gate_proj|up_proj|down_proj)\.weight$)");
    std::smatch m;
    if (std::regex_match(name, m, router) && source_.has(m[1].str() + "mlp.gate.weight")) {
      const auto alt = m[1].str() + "mlp.gate.weight";
      used_.insert(alt);
      return {source_.tensor(alt), alt};
    }
    if (std::regex_match(name, m, expert)) {
      const int64_t e = std::stoll(m[2].str());
      const std::string which = m[3].str();
      const bool down = which == "w2" || which == "down_proj";
      for (const char* block : {"mlp.", "block_sparse_moe."}) {
        const std::string base = m[1].str() + block + "experts." + (down ? "down_proj" : "gate_up_proj");
        for (const std::string& fused : {base, base + ".weight"}) {
          if (!source_.has(fused)) continue;
          used_.insert(fused);
          if (cached_name_ != fused) {
            cached_ = source_.tensor(fused);
            cached_name_ = fused;
          }
          SY_CHECK_AS(DataError, cached_.dim() == 3 && e < cached_.size(0), source_.file_of(fused), ": tensor ", fused,
                      " has shape ", cached_.sizes(), ", not [experts, ., .] with expert ", e);
          const auto slice = cached_[e];
          if (down) return {slice, fused};
          const int64_t f = slice.size(0) / 2;  // [2f, d]: gate rows, then up rows
          return {slice.narrow(0, which == "w1" || which == "gate_proj" ? 0 : f, f), fused};
        }
      }
    }
    throw DataError(source_.dir() + ": missing tensor " + name);
  }

  const HfCheckpoint& source_;
  std::set<std::string> used_;
  torch::Tensor cached_;
  std::string cached_name_;
};

/// Tensors a checkpoint may hold that carry nothing Switchyard needs.
bool ignorable(const std::string& name, bool tied) {
  return name.find("rotary_emb.inv_freq") != std::string::npos || (tied && name == "lm_head.weight");
}

}  // namespace

ExportSummary export_hf(const std::string& checkpoint_dir, const std::string& out_dir, const ExportOptions& options) {
  auto [config, model] = trainer::load_checkpoint_model(checkpoint_dir);
  ExportSummary summary;
  summary.family = options.family == core::ModelFamily::kCustom ? config.model.family : options.family;
  SY_CHECK_AS(ConfigError, summary.family != core::ModelFamily::kCustom, checkpoint_dir,
              ": model.family is custom; pass --family mixtral, qwen3_moe or olmoe");
  const auto mismatch = core::family_mismatch(config.model, summary.family);
  SY_CHECK_AS(ConfigError, mismatch.empty(), checkpoint_dir, ": ", mismatch);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for_each_hf_tensor(*model, config.model, summary.family, false, [&](const HfBinding& b) {
    auto t = (b.transposed ? b.view.t() : b.view).to(options.dtype).contiguous();
    summary.bytes += t.numel() * t.element_size();
    tensors.emplace_back(b.name, std::move(t));
  });
  summary.tensors = static_cast<int64_t>(tensors.size());
  const std::string dtype = options.dtype == torch::kBFloat16 ? "bfloat16" : "float32";
  summary.files = write_hf_checkpoint(out_dir, tensors, hf_config_json(config.model, config.losses, summary.family, dtype),
                                      options.max_shard_bytes);
  return summary;
}

ImportSummary import_hf(const std::string& hf_dir, const std::string& config_out, const std::string& checkpoint_out,
                        const ImportOptions& options) {
  const HfCheckpoint source(hf_dir);
  const auto config_path = (fs::path(hf_dir) / "config.json").string();
  const auto arch = parse_hf_config(source.config_text(), config_path, options.seq_len);
  SY_CHECK_AS(UsageError, arch.dense == options.upcycle, config_path, ": model_type ", arch.model_type,
              arch.dense ? " is a dense model: import it with --upcycle" : " is an MoE model: --upcycle takes a dense one");
  core::Config config = options.base_config.empty() ? core::Config{} : core::load_config(options.base_config);
  config.model = arch.model;
  config.losses.load_balance = arch.losses.load_balance;
  config.losses.z_loss = arch.losses.z_loss;
  if (options.upcycle) {
    config.model.moe.num_experts = options.experts;
    config.model.moe.top_k = options.top_k;
    config.train.seed = options.seed;
  }
  // Through the YAML loader, so that every rule of a config file holds (errors name the key).
  const std::string yaml = core::dump_config(config);
  config = core::load_config_text(yaml, {}, config_path + " (as a Switchyard config)");

  modules::TransformerLM model(config.model, config.losses, static_cast<uint64_t>(config.train.seed));
  TensorLookup lookup(source);
  ImportSummary summary;
  torch::NoGradGuard no_grad;
  torch::manual_seed(static_cast<uint64_t>(options.seed) + 1);
  for_each_hf_tensor(*model, config.model, config.model.family, options.upcycle, [&](const HfBinding& b) {
    const auto shape = (b.transposed ? b.view.t() : b.view).sizes().vec();
    const auto t = lookup.get(b.name, shape);
    b.view.copy_(b.transposed ? t.t() : t);
    if (options.upcycle && options.noise > 0 && b.name.find(".mlp.") != std::string::npos && b.view.dim() == 2) {
      b.view.add_(torch::randn(b.view.sizes()) * (options.noise * t.std().item<double>()));
    }
    ++summary.tensors;
  });
  for (const auto& name : source.names()) {
    SY_CHECK_AS(DataError, lookup.used().count(name) || ignorable(name, config.model.tie_embeddings), source.file_of(name),
                ": tensor ", name, " has no place in a ", arch.model_type, " model as Switchyard represents it");
  }
  core::write_file_atomically(config_out, yaml);
  trainer::write_weights_checkpoint(checkpoint_out, yaml, *model);
  summary.config = config;
  summary.model_type = arch.model_type;
  return summary;
}

}  // namespace switchyard::interop
