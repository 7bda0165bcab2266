// Megatron indexed dataset writer.
#include "data/megatron_writer.h"

#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/file_io.h"

namespace switchyard::data {

MegatronWriter::MegatronWriter(std::string prefix, int64_t vocab_size)
    : prefix_(std::move(prefix)), item_size_(vocab_size <= 65536 ? 2 : 4) {
  bin_.open(prefix_ + ".bin.tmp", std::ios::binary | std::ios::trunc);
  SY_CHECK_AS(IoError, bin_.good(), prefix_, ".bin.tmp: cannot create");
}

MegatronWriter::~MegatronWriter() {
  if (!finished_) {
    bin_.close();
    std::remove((prefix_ + ".bin.tmp").c_str());
  }
}

void MegatronWriter::add_document(const std::vector<int32_t>& tokens) {
  SY_ASSERT(!finished_, "MegatronWriter: add after finish");
  if (item_size_ == 2) {
    std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
    bin_.write(reinterpret_cast<const char*>(narrow.data()), static_cast<std::streamsize>(narrow.size() * 2));
  } else {
    bin_.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 4));
  }
  SY_CHECK_AS(IoError, bin_.good(), prefix_, ".bin.tmp: write failed (disk full?)");
  lengths_.push_back(static_cast<int32_t>(tokens.size()));
  tokens_ += static_cast<int64_t>(tokens.size());
}

void MegatronWriter::finish() {
  bin_.close();
  SY_CHECK_AS(IoError, !bin_.fail(), prefix_, ".bin.tmp: write failed (disk full?)");
  const uint64_t version = 1, num_seq = lengths_.size(), num_docs = lengths_.size() + 1;
  const uint8_t code = item_size_ == 2 ? 8 : 4;  // Megatron's dtype codes: 8 uint16, 4 int32
  std::string idx(kMegatronMagic, 9);
  const auto put = [&](const void* p, size_t n) { idx.append(static_cast<const char*>(p), n); };
  put(&version, 8);
  put(&code, 1);
  put(&num_seq, 8);
  put(&num_docs, 8);
  put(lengths_.data(), num_seq * 4);
  int64_t pointer = 0;
  for (const int32_t n : lengths_) {
    put(&pointer, 8);
    pointer += int64_t{n} * item_size_;
  }
  for (uint64_t d = 0; d < num_docs; ++d) put(&d, 8);  // document d ends before sequence d
  core::write_file_atomically(prefix_ + ".idx", idx);
  core::publish_file(prefix_ + ".bin.tmp", prefix_ + ".bin");
  finished_ = true;
}

void write_megatron_dataset(const std::string& prefix, const std::vector<std::vector<int64_t>>& documents,
                            int64_t vocab_size) {
  MegatronWriter writer(prefix, vocab_size);
  for (const auto& doc : documents) writer.add_document(std::vector<int32_t>(doc.begin(), doc.end()));
  writer.finish();
}

}  // namespace switchyard::data
