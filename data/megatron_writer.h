// Writing Megatron-LM indexed datasets (`prefix.bin` + `prefix.idx`, MMIDIDX version 1, one sequence
// per document), what `switchyard tokenize` produces and MegatronSource reads.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace switchyard::data {

/// The first 9 bytes of a Megatron index.
inline constexpr char kMegatronMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};

class MegatronWriter {
 public:
  /// Tokens as uint16 (Megatron dtype code 8) when every id fits (vocab_size <= 65536), else int32
  /// (code 4). Writes to temporary files until finish().
  MegatronWriter(std::string prefix, int64_t vocab_size);
  ~MegatronWriter();
  MegatronWriter(const MegatronWriter&) = delete;
  MegatronWriter& operator=(const MegatronWriter&) = delete;

  void add_document(const std::vector<int32_t>& tokens);
  /// Writes the index and publishes both files (fsync, rename). IoError naming the file on failure.
  void finish();

  int64_t documents() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t tokens() const { return tokens_; }

 private:
  std::string prefix_;
  int item_size_;
  std::ofstream bin_;
  std::vector<int32_t> lengths_;
  int64_t tokens_ = 0;
  bool finished_ = false;
};

/// A small dataset in one call (tests and tools): one sequence per document.
void write_megatron_dataset(const std::string& prefix, const std::vector<std::vector<int64_t>>& documents,
                            int64_t vocab_size = 65536);

}  // namespace switchyard::data
