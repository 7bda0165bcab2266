// Switchyard checkpoints <-> Hugging Face checkpoints of the MoE families, and sparse upcycling of a
// dense Llama or Qwen3 checkpoint. The tensor naming of each family is said once, in
// for_each_hf_tensor; export and import both walk it.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "core/config.h"
#include "modules/transformer.h"

namespace switchyard::interop {

/// One Hugging Face tensor as a view of a model parameter: HF's tensor is `view`, or `view.t()`.
struct HfBinding {
  std::string name;
  torch::Tensor view;
  bool transposed = false;
};

/// Visits every Hugging Face tensor of `family` in a single-process `model` (every expert local,
/// built from `config`). `dense_source`: name the experts after a dense model's MLP (each expert
/// visits the same names: upcycling) and visit no router.
void for_each_hf_tensor(modules::TransformerLMImpl& model, const core::ModelConfig& config, core::ModelFamily family,
                        bool dense_source, const std::function<void(const HfBinding&)>& fn);

struct ExportOptions {
  core::ModelFamily family = core::ModelFamily::kCustom;  ///< custom: the checkpoint's model.family
  torch::ScalarType dtype = torch::kFloat32;
  int64_t max_shard_bytes = 5'000'000'000;
};
struct ExportSummary {
  core::ModelFamily family;
  std::vector<std::string> files;
  int64_t tensors = 0, bytes = 0;
};
/// Writes the checkpoint at `checkpoint_dir` (any rank count) as a Hugging Face checkpoint in
/// `out_dir`. Throws ConfigError naming the key when the family cannot represent the model.
ExportSummary export_hf(const std::string& checkpoint_dir, const std::string& out_dir, const ExportOptions& options);

struct ImportOptions {
  int64_t seq_len = 0;        ///< model.seq_len (0: max_position_embeddings, at most 4096)
  std::string base_config;    ///< YAML whose sections other than model the imported config keeps
  bool upcycle = false;       ///< a dense Llama / Qwen3 checkpoint into an MoE
  int64_t experts = 8, top_k = 2;
  double noise = 0.0;         ///< upcycling: each expert weight += noise * std(weight) * N(0, 1)
  int64_t seed = 0;           ///< upcycling: the router's initialization and the noise
};
struct ImportSummary {
  core::Config config;
  std::string model_type;
  int64_t tensors = 0;
};
/// Reads the Hugging Face checkpoint in `hf_dir`, writes its Switchyard config to `config_out` and a
/// weights-only checkpoint (any rank count loads it; `train --resume` starts from it) to
/// `checkpoint_out`. Throws DataError naming the file and the key or tensor it cannot represent.
ImportSummary import_hf(const std::string& hf_dir, const std::string& config_out, const std::string& checkpoint_out,
                        const ImportOptions& options);

}  // namespace switchyard::interop
