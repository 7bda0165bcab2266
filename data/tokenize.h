// SentencePiece tokenization: a tokenizer for text sources, and `switchyard tokenize`, which turns
// text and JSONL files into a Megatron indexed dataset with an end-of-document token after each
// document. Built where SentencePiece is found (Debian's libsentencepiece-dev); without it every
// entry point refuses with an error saying so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace switchyard::data {

/// Whether this build has SentencePiece.
bool has_sentencepiece();

class SentencePieceTokenizer {
 public:
  /// Loads a SentencePiece model (`spm_train`'s .model). DataError naming the file when it cannot.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer();
  /// Token ids of `text` (thread-safe).
  std::vector<int32_t> encode(std::string_view text) const;
  int64_t vocab_size() const;
  int32_t eos_id() const;  ///< -1 when the model has none

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

struct TokenizeOptions {
  std::vector<std::string> inputs;  ///< text files (one document per non-empty line) or .jsonl files
  std::string tokenizer;            ///< SentencePiece model
  std::string out_prefix;           ///< writes out_prefix.bin and out_prefix.idx
  std::string text_key = "text";    ///< JSONL: the field holding each document's text
  int threads = 1;
  int64_t eod_id = -1;              ///< end-of-document token; -1: the model's eos
  int64_t max_document_bytes = 64 << 20;
  bool progress = true;             ///< a progress bar on stderr
};

struct TokenizeSummary {
  int64_t documents = 0, tokens = 0, bytes = 0, vocab_size = 0, eod_id = 0;
  double seconds = 0;
};

/// Tokenizes every input in order into one Megatron dataset (uint16 ids when the vocabulary fits,
/// else int32). Documents whose text encodes to no token are skipped. DataError naming the file and
/// line for an unreadable file, a JSONL line without a string `text_key`, or a document over
/// max_document_bytes; nothing is published then.
TokenizeSummary tokenize_files(const TokenizeOptions& options);

}  // namespace switchyard::data
