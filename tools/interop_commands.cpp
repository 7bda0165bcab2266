// `switchyard export`, `import` and `logits`: moving models to and from the Hugging Face ecosystem,
// and a checkpoint's logits on given tokens (what a transformers comparison reads).
#include <cstdlib>

#include "core/error.h"
#include "core/json_line.h"
#include "core/logging.h"
#include "interop/hf_weights.h"
#include "interop/safetensors.h"
#include "tools/command.h"
#include "trainer/checkpoint.h"

namespace switchyard::tools {

namespace {

/// Under mpirun these commands run once, on rank 0 (they read checkpoint files, not ranks).
bool launched_as_other_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    const char* v = std::getenv(var);
    if (v && std::atoi(v) != 0) return true;
  }
  return false;
}

void add_export(CLI::App& app, Commands& commands) {
  struct Options {
    std::string checkpoint, out, format = "hf", family, dtype = "fp32";
    double max_shard_gb = 5.0;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("export", "write a checkpoint (any rank count) as a Hugging Face checkpoint");
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint directory")->required();
  cmd->add_option("--out", o->out, "output directory (new or empty)")->required();
  cmd->add_option("--format", o->format, "hf (config.json + safetensors)")->check(CLI::IsMember({"hf"}));
  cmd->add_option("--family", o->family, "mixtral, qwen3_moe or olmoe (default: the checkpoint's model.family)")
      ->check(CLI::IsMember({"mixtral", "qwen3_moe", "olmoe"}));
  cmd->add_option("--dtype", o->dtype, "fp32 or bf16")->check(CLI::IsMember({"fp32", "bf16"}));
  cmd->add_option("--max-shard-gb", o->max_shard_gb, "shard the safetensors above this size (GB)")->check(CLI::PositiveNumber);
  commands.emplace_back(cmd, [o](RankStarter&) {
    if (launched_as_other_rank()) return 0;
    interop::ExportOptions options;
    for (const auto& [value, name] : core::EnumNames<core::ModelFamily>::kValues) {
      if (o->family == name) options.family = value;
    }
    options.dtype = o->dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
    options.max_shard_bytes = static_cast<int64_t>(o->max_shard_gb * 1e9);
    const auto s = interop::export_hf(o->checkpoint, o->out, options);
    core::JsonLine line;
    line.add("export", o->out).add("family", core::enum_name(s.family)).add("tensors", s.tensors).add("bytes", s.bytes);
    line.add("files", static_cast<int64_t>(s.files.size()));
    std::printf("%s\n", line.str().c_str());
    return 0;
  });
}

void add_import(CLI::App& app, Commands& commands) {
  struct Options {
    std::string hf, config_out, checkpoint_out;
    interop::ImportOptions import;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("import", "read a Hugging Face checkpoint (Mixtral, Qwen3-MoE, OLMoE; Llama "
                                               "or Qwen3 with --upcycle) into a config and a checkpoint");
  cmd->add_option("--hf", o->hf, "Hugging Face checkpoint directory (config.json, safetensors)")->required();
  cmd->add_option("--config", o->config_out, "Switchyard config to write (YAML)")->required();
  cmd->add_option("--out", o->checkpoint_out, "checkpoint directory to write (new); train --resume takes it")->required();
  cmd->add_option("--base-config", o->import.base_config, "keep this config's sections other than model (data, train, ...)");
  cmd->add_option("--seq-len", o->import.seq_len, "model.seq_len (default: max_position_embeddings, at most 4096)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--upcycle", o->import.upcycle, "sparse upcycling: a dense checkpoint into an MoE whose experts copy its MLP");
  cmd->add_option("--experts", o->import.experts, "--upcycle: routed experts per layer")->check(CLI::Range(1, 4096));
  cmd->add_option("--top-k", o->import.top_k, "--upcycle: experts per token")->check(CLI::Range(1, 64));
  cmd->add_option("--noise", o->import.noise, "--upcycle: each expert weight += noise * std(weight) * N(0, 1)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", o->import.seed, "--upcycle: seed of the router's initialization and the noise")
      ->check(CLI::NonNegativeNumber);
  commands.emplace_back(cmd, [o](RankStarter&) {
    if (launched_as_other_rank()) return 0;
    const auto s = interop::import_hf(o->hf, o->config_out, o->checkpoint_out, o->import);
    core::JsonLine line;
    line.add("import", o->hf).add("model_type", s.model_type).add("family", core::enum_name(s.config.model.family));
    line.add("tensors", s.tensors).add("config", o->config_out).add("checkpoint", o->checkpoint_out);
    std::printf("%s\n", line.str().c_str());
    return 0;
  });
}

void add_logits(CLI::App& app, Commands& commands) {
  struct Options {
    std::string checkpoint, tokens, out, device = "cpu";
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("logits", "a checkpoint's fp32 logits on given tokens (safetensors in and out)");
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint directory (any rank count)")->required();
  cmd->add_option("--tokens", o->tokens, "safetensors file with an integer tensor 'tokens' [batch, seq]")->required();
  cmd->add_option("--out", o->out, "safetensors file to write with 'logits' [batch, seq, vocab] fp32")->required();
  cmd->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  commands.emplace_back(cmd, [o](RankStarter&) {
    if (launched_as_other_rank()) return 0;
    auto [config, model] = trainer::load_checkpoint_model(o->checkpoint);
    const interop::SafetensorsFile file(o->tokens);
    SY_CHECK_AS(DataError, file.contains("tokens"), o->tokens, ": no tensor tokens");
    auto tokens = file.tensor("tokens");
    SY_CHECK_AS(DataError, !torch::isFloatingType(tokens.scalar_type()) && tokens.dim() == 2, o->tokens,
                ": tensor tokens: expected integers [batch, seq], got ", c10::toString(tokens.scalar_type()), " ", tokens.sizes());
    tokens = tokens.to(torch::kInt64);
    SY_CHECK_AS(DataError, tokens.min().item<int64_t>() >= 0 && tokens.max().item<int64_t>() < config.model.vocab_size,
                o->tokens, ": tensor tokens: ids outside [0, model.vocab_size ", config.model.vocab_size, ")");
    const torch::Device device(o->device == "cuda" ? torch::kCUDA : torch::kCPU);
    model->to(device);
    model->eval();
    torch::NoGradGuard no_grad;
    const auto logits = model->forward(tokens.to(device)).logits.to(torch::kCPU, torch::kFloat32);
    interop::write_safetensors(o->out, {{"logits", logits}});
    std::printf("%s\n", core::JsonLine().add("logits", o->out).add("batch", tokens.size(0)).add("seq", tokens.size(1)).str().c_str());
    return 0;
  });
}

}  // namespace

void add_interop_commands(CLI::App& app, Commands& commands) {
  add_export(app, commands);
  add_import(app, commands);
  add_logits(app, commands);
}

}  // namespace switchyard::tools
