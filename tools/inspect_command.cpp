// `switchyard inspect`: a checkpoint's manifest, every checksum verified.
#include <google/protobuf/util/json_util.h>

#include <iostream>

#include "tools/command.h"
#include "trainer/checkpoint.h"

namespace switchyard::tools {

void add_inspect_command(CLI::App& app, Commands& commands) {
  struct Options {
    std::string dir;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("inspect", "show a checkpoint's manifest and verify its checksums");
  cmd->add_option("checkpoint", o->dir, "checkpoint directory")->required();
  cmd->add_flag("--json", o->json, "print the manifest as JSON");
  commands.emplace_back(cmd, [o](RankStarter&) {
    const auto manifest = trainer::read_manifest(o->dir);
    trainer::verify_checkpoint(o->dir, manifest);
    if (o->json) {
      std::string json;
      google::protobuf::util::JsonPrintOptions options;
      options.add_whitespace = false;
      (void)google::protobuf::util::MessageToJsonString(manifest, &json, options);
      std::cout << json << "\n";
      return 0;
    }
    int64_t bytes = 0, experts = 0;
    for (const auto& e : manifest.tensors()) {
      bytes += e.nbytes();
      experts += trainer::is_expert_tensor(e.name());
    }
    std::cout << "checkpoint " << o->dir << "\n"
              << "  created by       " << manifest.created_by() << "\n"
              << "  step             " << manifest.step() << (manifest.weights_only() ? " (weights only: imported)" : "") << "\n"
              << "  tokens seen      " << manifest.tokens_seen() << "\n"
              << "  skipped steps    " << manifest.skipped_steps() << "\n"
              << "  world size       " << manifest.world_size() << " (expert_parallel " << manifest.expert_parallel() << ")\n"
              << "  data             seed " << manifest.data_seed() << ", " << manifest.data_windows() << " windows\n"
              << "  MoE layers       " << manifest.placement_size() << "\n"
              << "  tensors          " << manifest.tensors_size() << " (" << experts << " per-expert), " << bytes << " bytes\n"
              << "  checksums        ok (crc32c of the manifest and of every tensor verified)\n";
    for (int l = 0; l < manifest.placement_size(); ++l) {
      std::cout << "  placement[" << l << "]    ";
      for (auto owner : manifest.placement(l).owner()) std::cout << owner << " ";
      std::cout << "\n";
    }
    return 0;
  });
}

}  // namespace switchyard::tools
