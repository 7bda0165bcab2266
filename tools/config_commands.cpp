// `switchyard config check` and `config reference`.
#include <iostream>

#include "tools/command.h"

namespace switchyard::tools {

void add_config_commands(CLI::App& app, Commands& commands) {
  CLI::App* config_cmd = app.add_subcommand("config", "inspect configurations");
  config_cmd->require_subcommand(1);
  auto args = std::make_shared<ConfigArgs>();
  CLI::App* check = config_cmd->add_subcommand("check", "load and validate a config; print it resolved");
  args->add_to(check);
  commands.emplace_back(check, [args](RankStarter&) {
    std::cout << core::dump_config(args->load());
    return 0;
  });
  CLI::App* reference =
      config_cmd->add_subcommand("reference", "print every config key with type, default and bounds (Markdown)");
  commands.emplace_back(reference, [](RankStarter&) {
    std::cout << core::config_reference_markdown();
    return 0;
  });
}

}  // namespace switchyard::tools
