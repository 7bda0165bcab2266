// safetensors, the tensor file format of the Hugging Face ecosystem: an 8-byte little-endian header
// length N, N bytes of JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}), then the tensors' bytes (offsets relative to the data start).
// The reader maps the file and checks every field against it before a tensor is read.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace switchyard::interop {

/// One mapped safetensors file. Every error is a DataError naming the file (and the tensor).
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  struct Entry {
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
    int64_t begin = 0, end = 0;  ///< byte range in the data section
  };
  const std::string& path() const { return path_; }
  const std::map<std::string, Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  /// A CPU tensor of the file's dtype and shape (a copy of the mapped bytes).
  torch::Tensor tensor(const std::string& name) const;

 private:
  std::string path_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
  const char* data_ = nullptr;  ///< the data section inside the mapping
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
};

/// Writes `tensors` (CPU or not; any of the dtypes the reader takes) in the given order, with
/// `metadata`, to `path` atomically (temporary file, fsync, rename).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// The safetensors dtype name of a scalar type ("F32", "BF16", ...); throws for one it has none.
std::string safetensors_dtype(torch::ScalarType type);

}  // namespace switchyard::interop
