// Placement plan files (YAML).
#include "placement/plan_file.h"

#include <yaml-cpp/yaml.h>

#include <fstream>

#include "core/error.h"
#include "core/file_io.h"

namespace switchyard::placement {

std::vector<ExpertPlacement> load_placement_plan(const std::string& path, int64_t num_moe_layers,
                                                 int64_t num_experts, int64_t ep_size) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw ConfigError(path + ": cannot open placement plan (parallel.placement)");
  } catch (const YAML::ParserException& e) {
    throw ConfigError(path + ":" + std::to_string(e.mark.line + 1) + ": malformed YAML: " + e.msg);
  }
  SY_CHECK_AS(ConfigError, root.IsMap() && root["layers"] && root["layers"].IsSequence(), path,
              ": a placement plan needs a 'layers' list");
  if (root["expert_parallel"]) {
    int64_t planned = -1;
    try {
      planned = root["expert_parallel"].as<int64_t>();
    } catch (const YAML::Exception&) {
      throw ConfigError(path + ": expert_parallel: not a rank count");
    }
    SY_CHECK_AS(ConfigError, planned == ep_size, path, ": planned for expert_parallel ", planned,
                ", the run has parallel.expert_parallel ", ep_size);
  }
  const auto layers = root["layers"];
  SY_CHECK_AS(ConfigError, static_cast<int64_t>(layers.size()) == num_moe_layers, path, ": has ", layers.size(),
              " layers, the model has ", num_moe_layers, " MoE layers");
  std::vector<ExpertPlacement> placements;
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::string where = path + ": layer " + std::to_string(l);
    SY_CHECK_AS(ConfigError, layers[l].IsSequence() && static_cast<int64_t>(layers[l].size()) == num_experts, where,
                ": expected a list of ", num_experts, " ranks (one per expert)");
    std::vector<int64_t> owner;
    for (size_t e = 0; e < layers[l].size(); ++e) {
      int64_t r = -1;
      try {
        r = layers[l][e].as<int64_t>();
      } catch (const YAML::Exception&) {
        throw ConfigError(where + ": expert " + std::to_string(e) + ": not a rank number");
      }
      owner.push_back(r);
    }
    try {
      placements.emplace_back(owner, ep_size);
    } catch (const ConfigError& e) {
      throw ConfigError(where + ": " + e.what());
    }
  }
  return placements;
}

void save_placement_plan(const std::string& path, const std::vector<ExpertPlacement>& placements, int64_t ep_size) {
  YAML::Emitter out;
  out << YAML::Comment("switchyard placement plan") << YAML::BeginMap;
  out << YAML::Key << "expert_parallel" << YAML::Value << ep_size;
  out << YAML::Key << "layers" << YAML::Value << YAML::BeginSeq;
  for (const auto& p : placements) out << YAML::Flow << p.owners();
  out << YAML::EndSeq << YAML::EndMap;
  core::write_file_atomically(path, std::string(out.c_str()) + "\n");
}

}  // namespace switchyard::placement
