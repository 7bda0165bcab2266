// Token streams the trainer reads: the built-in synthetic corpus, raw text (byte tokenizer), flat token
// binaries (nanoGPT layout) and Megatron-LM indexed datasets (.bin + .idx, "MMIDIDX").
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"

namespace switchyard::data {

/// A flat stream of token ids.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  virtual int64_t num_tokens() const = 0;
  /// Copies tokens [offset, offset + count) into `out`. Throws DataError naming the file on failure.
  virtual void read(int64_t offset, int64_t count, int64_t* out) const = 0;
  /// One line for logs: what was read from where.
  virtual std::string describe() const = 0;
};

/// Byte-level tokenizer: each byte of UTF-8 text is one token in [0, 256).
std::vector<int64_t> byte_tokenize(const std::string& text);
std::string byte_detokenize(const std::vector<int64_t>& tokens);

/// The built-in corpus: documents from several domains (arithmetic, sorting, bracket language,
/// a Markov text), deterministic in the seed.
class SyntheticCorpus : public TokenSource {
 public:
  SyntheticCorpus(int64_t num_tokens, uint64_t seed);
  int64_t num_tokens() const override { return static_cast<int64_t>(bytes_.size()); }
  void read(int64_t offset, int64_t count, int64_t* out) const override;
  std::string describe() const override;
  /// Unigram entropy of the corpus in nats: the loss of a model that knows only token frequencies.
  double unigram_entropy() const;
  const std::string& text() const { return bytes_; }

 private:
  std::string bytes_;
};

/// A text file, or every regular file of a directory in name order: bytes as tokens, or with a
/// SentencePiece model (`tokenizer`) its tokens, each file followed by the model's end-of-sentence
/// token where it has one.
class TextSource : public TokenSource {
 public:
  explicit TextSource(const std::string& path, const std::string& tokenizer = "");
  int64_t num_tokens() const override {
    return tokenizer_.empty() ? static_cast<int64_t>(bytes_.size()) : static_cast<int64_t>(ids_.size());
  }
  void read(int64_t offset, int64_t count, int64_t* out) const override;
  std::string describe() const override;

 private:
  std::string path_, tokenizer_, bytes_;
  std::vector<int32_t> ids_;
  int64_t num_files_ = 0;
};

/// The size and modification time of a data file when the job opened it: a file changed under a
/// running job (rewritten, truncated, appended to) is refused at its next read, naming it.
struct FileStamp {
  std::string path;
  int64_t bytes = 0;
  int64_t mtime_ns = 0;
  static FileStamp of(const std::string& path);
  void check_unchanged() const;
};

/// A flat binary of little-endian uint16 or uint32 token ids (nanoGPT's train.bin layout).
class TokenFileSource : public TokenSource {
 public:
  TokenFileSource(const std::string& path, core::TokenDtype dtype);
  int64_t num_tokens() const override { return num_tokens_; }
  void read(int64_t offset, int64_t count, int64_t* out) const override;
  std::string describe() const override;

 private:
  std::string path_;
  int64_t item_size_;
  int64_t num_tokens_;
  FileStamp stamp_;
};

/// Megatron-LM indexed dataset `prefix.bin` + `prefix.idx` (MMIDIDX version 1); the documents'
/// sequences are read as one stream in index order.
class MegatronSource : public TokenSource {
 public:
  explicit MegatronSource(const std::string& prefix);
  int64_t num_tokens() const override { return num_tokens_; }
  void read(int64_t offset, int64_t count, int64_t* out) const override;
  std::string describe() const override;
  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_documents() const { return num_documents_; }

 private:
  std::string prefix_;
  int64_t item_size_ = 2;
  int dtype_code_ = 8;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> pointers_;
  int64_t num_documents_ = 0;
  int64_t num_tokens_ = 0;
  FileStamp bin_stamp_;
};

/// A source and its share of the run's sequences.
struct WeightedSource {
  double weight = 1.0;
  std::unique_ptr<TokenSource> source;
};
/// The sources `config` names: data.path's (weight 1), or each of data.blend's ("w1 path1 w2 path2
/// ...", weights normalized), each opened as data.source says. Throws DataError (a missing file, a
/// bad format) or ConfigError naming data.blend.
std::vector<WeightedSource> open_token_sources(const core::DataConfig& config, uint64_t seed);

}  // namespace switchyard::data
