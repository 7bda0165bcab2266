// Hugging Face `config.json` <-> Switchyard's model config, for the MoE families Switchyard matches
// exactly (Mixtral, Qwen3-MoE, OLMoE) and the dense ones it upcycles (Llama, Qwen3).
#pragma once

#include <string>

#include "core/config.h"

namespace switchyard::interop {

/// The `config.json` text of `model` as Hugging Face's `family` architecture (the caller checked
/// core::family_mismatch), weights stored as `dtype` ("float32" or "bfloat16").
std::string hf_config_json(const core::ModelConfig& model, const core::LossesConfig& losses, core::ModelFamily family,
                           const std::string& dtype);

/// What a `config.json` describes.
struct HfArchitecture {
  std::string model_type;   ///< as the file says: mixtral, qwen3_moe, olmoe, llama, qwen3
  bool dense = false;       ///< llama, qwen3: a dense model (imported only by upcycling)
  core::ModelConfig model;  ///< the MoE model (for a dense one: its attention, norms and MLP width;
                            ///< moe.ffn_hidden = the MLP's width, family = the MoE family it upcycles to)
  core::LossesConfig losses;  ///< router_aux_loss_coef and router_z_loss_coef where the file has them
};

/// Parses `config.json` text (`path` names the file in errors). Throws DataError naming the file and
/// the key for anything Switchyard cannot represent exactly (an unknown model_type, sliding-window
/// attention, RoPE scaling, biases, another activation, ...). `seq_len`: model.seq_len to use
/// (0 = max_position_embeddings, at most 4096).
HfArchitecture parse_hf_config(const std::string& text, const std::string& path, int64_t seq_len);

}  // namespace switchyard::interop
