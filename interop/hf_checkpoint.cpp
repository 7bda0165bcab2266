// Hugging Face checkpoint directories: reading (single file or index + shards) and sharded writing.
#include "interop/hf_checkpoint.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"

namespace switchyard::interop {
namespace fs = std::filesystem;
namespace {

using json = nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(DataError, in.good(), path, ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

HfCheckpoint::HfCheckpoint(const std::string& dir) : dir_(dir) {
  SY_CHECK_AS(DataError, fs::is_directory(dir), dir, ": not a directory (a Hugging Face checkpoint directory)");
  const auto index_path = (fs::path(dir) / kIndexName).string();
  std::vector<std::string> file_names;
  if (fs::exists(index_path)) {
    const json index = json::parse(read_text(index_path), nullptr, /*allow_exceptions=*/false);
    SY_CHECK_AS(DataError, index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
                index_path, ": no weight_map object");
    std::map<std::string, std::string> wanted;  // tensor -> file
    for (const auto& [tensor, file] : index["weight_map"].items()) {
      SY_CHECK_AS(DataError, file.is_string(), index_path, ": weight_map.", tensor, " is not a file name");
      const auto name = file.get<std::string>();
      SY_CHECK_AS(DataError, !name.empty() && fs::path(name).filename() == name && name != "." && name != "..",
                  index_path, ": weight_map.", tensor, " names '", name, "', not a file of the directory");
      wanted[tensor] = name;
      if (std::find(file_names.begin(), file_names.end(), name) == file_names.end()) file_names.push_back(name);
    }
    for (const auto& name : file_names) files_.push_back(std::make_unique<SafetensorsFile>((fs::path(dir) / name).string()));
    for (const auto& [tensor, file] : wanted) {
      const SafetensorsFile* holder = nullptr;
      for (const auto& f : files_) {
        if (fs::path(f->path()).filename() == file) holder = f.get();
      }
      SY_CHECK_AS(DataError, holder->contains(tensor), holder->path(), ": no tensor ", tensor, " (", kIndexName,
                  " places it here)");
      where_[tensor] = holder;
    }
  } else {
    const auto single = (fs::path(dir) / kSingleName).string();
    SY_CHECK_AS(DataError, fs::exists(single), dir, ": neither ", kSingleName, " nor ", kIndexName);
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& [name, entry] : files_.back()->entries()) where_[name] = files_.back().get();
  }
}

std::string HfCheckpoint::config_text() const { return read_text((fs::path(dir_) / "config.json").string()); }

torch::Tensor HfCheckpoint::tensor(const std::string& name) const {
  const auto it = where_.find(name);
  SY_CHECK_AS(DataError, it != where_.end(), dir_, ": missing tensor ", name);
  return it->second->tensor(name);
}

std::string HfCheckpoint::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  return it == where_.end() ? dir_ : it->second->path();
}

std::vector<std::string> HfCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

std::vector<std::string> write_hf_checkpoint(const std::string& dir,
                                             const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                             const std::string& config_json, int64_t max_shard_bytes) {
  std::error_code ec;
  SY_CHECK_AS(IoError, !fs::exists(dir) || (fs::is_directory(dir) && fs::is_empty(dir, ec)), dir,
              ": exists and is not an empty directory");
  fs::create_directories(dir, ec);
  SY_CHECK_AS(IoError, !ec, dir, ": cannot create (", ec.message(), ")");
  // Shards in tensor order, each up to max_shard_bytes (a tensor larger than that gets its own).
  std::vector<std::vector<size_t>> shards(1);
  int64_t shard_bytes = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t n = tensors[i].second.numel() * tensors[i].second.element_size();
    if (!shards.back().empty() && shard_bytes + n > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += n;
    total += n;
  }
  std::vector<std::string> written;
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    const std::string file = shards.size() == 1 ? kSingleName : name;
    std::vector<std::pair<std::string, torch::Tensor>> part;
    for (const size_t i : shards[s]) {
      part.push_back(tensors[i]);
      weight_map[tensors[i].first] = file;
    }
    write_safetensors((fs::path(dir) / file).string(), part, metadata);
    written.push_back(file);
  }
  if (shards.size() > 1) {
    const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    core::write_file_atomically((fs::path(dir) / kIndexName).string(), index.dump(2) + "\n");
    written.push_back(kIndexName);
  }
  core::write_file_atomically((fs::path(dir) / "config.json").string(), config_json);
  written.push_back("config.json");
  return written;
}

}  // namespace switchyard::interop
