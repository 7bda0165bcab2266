// A Hugging Face checkpoint directory: config.json and model.safetensors, or shards listed by
// model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map": {tensor: file}}).
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "interop/safetensors.h"

namespace switchyard::interop {

class HfCheckpoint {
 public:
  /// Opens `dir` and every safetensors file it has (the index's, else model.safetensors). Throws
  /// DataError naming the file at fault.
  explicit HfCheckpoint(const std::string& dir);
  const std::string& dir() const { return dir_; }
  /// The text of dir/config.json.
  std::string config_text() const;
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  /// Tensor `name` (DataError naming the directory when no file has it).
  torch::Tensor tensor(const std::string& name) const;
  /// The file that holds `name` (for messages).
  std::string file_of(const std::string& name) const;
  std::vector<std::string> names() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
};

/// Writes `tensors` into `dir` (created; must not exist or be empty) as model.safetensors, or, when
/// they exceed `max_shard_bytes`, as model-0000i-of-0000n.safetensors shards (no tensor split) with
/// model.safetensors.index.json; plus `config_json` as config.json. Returns the files written.
std::vector<std::string> write_hf_checkpoint(const std::string& dir,
                                             const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                             const std::string& config_json, int64_t max_shard_bytes);

}  // namespace switchyard::interop
