// Token sources: synthetic corpus, text, flat token binaries, Megatron indexed datasets.
#include "data/token_source.h"

#include "data/megatron_writer.h"
#include "data/tokenize.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

#include "core/error.h"

namespace switchyard::data {
namespace fs = std::filesystem;
namespace {

/// A data file must be a regular file: a FIFO or a device (/dev/zero) would block or never end.
void require_regular_file(const std::string& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  SY_CHECK_AS(DataError, fs::exists(status), path, ": no such file (data.path)");
  SY_CHECK_AS(DataError, fs::is_regular_file(status), path,
              ": not a regular file (a directory, FIFO or device cannot be read as data; data.path)");
}

std::string read_file(const std::string& path) {
  require_regular_file(path);
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(DataError, in.good(), path, ": cannot open data file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void read_bytes(const std::string& path, int64_t offset, int64_t count, char* out) {
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(DataError, in.good(), path, ": cannot open data file");
  in.seekg(offset);
  in.read(out, count);
  SY_CHECK_AS(DataError, in.gcount() == count, path, ": truncated: wanted ", count, " bytes at offset ", offset,
              ", got ", in.gcount());
}

}  // namespace

FileStamp FileStamp::of(const std::string& path) {
  require_regular_file(path);
  FileStamp s;
  s.path = path;
  s.bytes = static_cast<int64_t>(fs::file_size(path));
  s.mtime_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(fs::last_write_time(path).time_since_epoch()).count();
  return s;
}

void FileStamp::check_unchanged() const {
  std::error_code ec;
  const auto bytes = fs::file_size(path, ec);
  const auto mtime = fs::last_write_time(path, ec);
  SY_CHECK_AS(DataError, !ec, path, ": vanished while the job reads it (", ec.message(), ")");
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(mtime.time_since_epoch()).count();
  SY_CHECK_AS(DataError, static_cast<int64_t>(bytes) == this->bytes && ns == mtime_ns, path,
              ": changed while the job reads it (", this->bytes, " bytes when opened, ", bytes,
              " now, or a newer modification time); restart the job on the new file");
}

namespace {

uint64_t below(std::mt19937_64& rng, uint64_t n) { return rng() % n; }

}  // namespace

std::vector<int64_t> byte_tokenize(const std::string& text) {
  std::vector<int64_t> tokens(text.size());
  for (size_t i = 0; i < text.size(); ++i) tokens[i] = static_cast<unsigned char>(text[i]);
  return tokens;
}

std::string byte_detokenize(const std::vector<int64_t>& tokens) {
  std::string text(tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) text[i] = static_cast<char>(tokens[i] & 0xff);
  return text;
}

// ---- Synthetic corpus ----

SyntheticCorpus::SyntheticCorpus(int64_t num_tokens, uint64_t seed) {
  // mt19937_64 with modulo reduction: the same bytes on every platform and compiler.
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 1);
  // Markov text: 20 letters and a space, each with three likely successors.
  const std::string letters = "etaoinshrdlucmfwypvb ";
  std::vector<std::array<int, 3>> next(letters.size());
  for (auto& row : next)
    for (auto& n : row) n = static_cast<int>(below(rng, letters.size()));
  bytes_.reserve(num_tokens + 64);
  std::string doc;
  while (static_cast<int64_t>(bytes_.size()) < num_tokens) {
    doc.clear();
    switch (below(rng, 4)) {
      case 0: {  // arithmetic
        const uint64_t a = below(rng, 1000), b = below(rng, 1000);
        doc = std::to_string(a) + "+" + std::to_string(b) + "=" + std::to_string(a + b) + ";";
        break;
      }
      case 1: {  // sorting
        std::vector<int> v(3 + below(rng, 5));
        for (auto& x : v) x = static_cast<int>(below(rng, 10));
        doc = "sort";
        for (int x : v) doc += " " + std::to_string(x);
        std::sort(v.begin(), v.end());
        doc += " ->";
        for (int x : v) doc += " " + std::to_string(x);
        doc += ";";
        break;
      }
      case 2: {  // bracket language: balanced, depth <= 6
        static const char open[] = "([{<", close[] = ")]}>";
        std::string stack;
        const uint64_t len = 4 + below(rng, 20);
        for (uint64_t i = 0; i < len || !stack.empty(); ++i) {
          if (!stack.empty() && (i >= len || stack.size() >= 6 || below(rng, 2))) {
            doc += stack.back();
            stack.pop_back();
          } else {
            const auto k = below(rng, 4);
            doc += open[k];
            stack += close[k];
          }
        }
        doc += ";";
        break;
      }
      default: {  // Markov text
        size_t c = below(rng, letters.size());
        const uint64_t len = 20 + below(rng, 40);
        for (uint64_t i = 0; i < len; ++i) {
          doc += letters[c];
          c = next[c][below(rng, 8) < 6 ? below(rng, 2) : 2];
        }
        doc += ".";
        break;
      }
    }
    bytes_ += doc;
    bytes_ += '\n';
  }
  bytes_.resize(num_tokens);
}

void SyntheticCorpus::read(int64_t offset, int64_t count, int64_t* out) const {
  SY_ASSERT(offset >= 0 && offset + count <= num_tokens(), "synthetic read out of range");
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<unsigned char>(bytes_[offset + i]);
}

std::string SyntheticCorpus::describe() const {
  std::ostringstream s;
  s << "synthetic corpus: " << num_tokens() << " tokens (arithmetic, sorting, brackets, Markov text), unigram entropy "
    << unigram_entropy() << " nats";
  return s.str();
}

double SyntheticCorpus::unigram_entropy() const {
  std::array<int64_t, 256> counts{};
  for (unsigned char c : bytes_) ++counts[c];
  double h = 0;
  const double n = static_cast<double>(bytes_.size());
  for (auto c : counts)
    if (c > 0) h -= (c / n) * std::log(c / n);
  return h;
}

// ---- Text ----

TextSource::TextSource(const std::string& path, const std::string& tokenizer) : path_(path), tokenizer_(tokenizer) {
  SY_CHECK_AS(DataError, fs::exists(path), path, ": no such file or directory (data.path)");
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    // Regular files only (following links): a FIFO or device inside the directory is skipped.
    for (const auto& entry : fs::directory_iterator(path))
      if (entry.is_regular_file()) files.push_back(entry.path().string());
    std::sort(files.begin(), files.end());
    SY_CHECK_AS(DataError, !files.empty(), path, ": directory holds no files (data.path)");
  } else {
    files.push_back(path);
  }
  num_files_ = static_cast<int64_t>(files.size());
  if (tokenizer_.empty()) {
    for (const auto& f : files) bytes_ += read_file(f);
    SY_CHECK_AS(DataError, !bytes_.empty(), path, ": empty (data.path)");
    return;
  }
  const SentencePieceTokenizer model(tokenizer_);
  for (const auto& f : files) {
    const auto ids = model.encode(read_file(f));
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    if (model.eos_id() >= 0) ids_.push_back(model.eos_id());
  }
  SY_CHECK_AS(DataError, !ids_.empty(), path, ": empty (data.path)");
}

void TextSource::read(int64_t offset, int64_t count, int64_t* out) const {
  if (!tokenizer_.empty()) {
    for (int64_t i = 0; i < count; ++i) out[i] = ids_[offset + i];
    return;
  }
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<unsigned char>(bytes_[offset + i]);
}

std::string TextSource::describe() const {
  return "text: " + path_ + " (" + std::to_string(num_files_) + " file(s), " + std::to_string(num_tokens()) +
         (tokenizer_.empty() ? " byte tokens)" : " SentencePiece tokens of " + tokenizer_ + ")");
}

// ---- Flat token binary ----

TokenFileSource::TokenFileSource(const std::string& path, core::TokenDtype dtype)
    : path_(path), item_size_(dtype == core::TokenDtype::kUint16 ? 2 : 4) {
  stamp_ = FileStamp::of(path);
  const int64_t bytes = stamp_.bytes;
  SY_CHECK_AS(DataError, bytes % item_size_ == 0, path, ": size ", bytes, " is not a multiple of ", item_size_,
              " (data.token_dtype ", core::enum_name(dtype), ")");
  num_tokens_ = bytes / item_size_;
  SY_CHECK_AS(DataError, num_tokens_ > 0, path, ": empty (data.path)");
}

void TokenFileSource::read(int64_t offset, int64_t count, int64_t* out) const {
  stamp_.check_unchanged();
  std::vector<char> raw(count * item_size_);
  read_bytes(path_, offset * item_size_, count * item_size_, raw.data());
  for (int64_t i = 0; i < count; ++i) {
    if (item_size_ == 2) {
      uint16_t v;
      std::memcpy(&v, raw.data() + 2 * i, 2);
      out[i] = v;
    } else {
      uint32_t v;
      std::memcpy(&v, raw.data() + 4 * i, 4);
      out[i] = v;
    }
  }
}

std::string TokenFileSource::describe() const {
  return "tokens: " + path_ + " (" + std::to_string(num_tokens_) + " tokens of " + std::to_string(8 * item_size_) +
         " bits)";
}

// ---- Megatron indexed dataset ----

namespace {
int64_t megatron_item_size(int code) {
  switch (code) {
    case 1: case 2: return 1;   // uint8, int8
    case 3: case 8: return 2;   // int16, uint16
    case 4: return 4;           // int32
    case 5: return 8;           // int64
    default: return 0;          // float64 (6), float32 (7): not token ids
  }
}
}  // namespace

MegatronSource::MegatronSource(const std::string& prefix) : prefix_(prefix) {
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  const std::string idx = read_file(idx_path);
  SY_CHECK_AS(DataError, idx.size() >= 34 && std::memcmp(idx.data(), kMegatronMagic, 9) == 0, idx_path,
              ": not a Megatron index (no MMIDIDX header)");
  size_t pos = 9;
  auto take = [&](void* dst, size_t n) {
    SY_CHECK_AS(DataError, pos + n <= idx.size(), idx_path, ": truncated index");
    std::memcpy(dst, idx.data() + pos, n);
    pos += n;
  };
  uint64_t version = 0, num_seq = 0, num_docs = 0;
  uint8_t code = 0;
  take(&version, 8);
  SY_CHECK_AS(DataError, version == 1, idx_path, ": index version ", version, ", expected 1");
  take(&code, 1);
  dtype_code_ = code;
  item_size_ = megatron_item_size(code);
  SY_CHECK_AS(DataError, item_size_ > 0, idx_path, ": token dtype code ", int(code), " is not an integer type");
  take(&num_seq, 8);
  take(&num_docs, 8);
  // Counts are checked against the bytes the index holds before anything is allocated for them:
  // lengths (4 bytes) and pointers (8) per sequence, then one document index (8) per document + 1.
  const uint64_t left = idx.size() - pos;
  SY_CHECK_AS(DataError, num_seq <= left / 12 && num_docs <= (left - num_seq * 12) / 8, idx_path, ": ", num_seq,
              " sequences and ", num_docs - 1, " documents do not fit its ", idx.size(), " bytes");
  SY_CHECK_AS(DataError, num_seq > 0 && num_docs >= 2, idx_path, ": holds no documents");
  lengths_.resize(num_seq);
  pointers_.resize(num_seq);
  std::vector<int64_t> doc_index(num_docs);
  take(lengths_.data(), num_seq * 4);
  take(pointers_.data(), num_seq * 8);
  take(doc_index.data(), num_docs * 8);
  num_documents_ = static_cast<int64_t>(num_docs) - 1;  // document_indices has a leading 0
  for (uint64_t i = 0; i < num_seq; ++i) {
    SY_CHECK_AS(DataError, lengths_[i] >= 0, idx_path, ": sequence ", i, " has length ", lengths_[i]);
    const int64_t expected = i == 0 ? 0 : pointers_[i - 1] + int64_t{lengths_[i - 1]} * item_size_;
    SY_CHECK_AS(DataError, pointers_[i] == expected, idx_path, ": sequence ", i, " is not contiguous in ", bin_path);
    num_tokens_ += lengths_[i];
  }
  for (uint64_t d = 0; d < num_docs; ++d) {
    const int64_t first = d == 0 ? 0 : doc_index[d - 1];
    const int64_t want_last = static_cast<int64_t>(num_seq);
    SY_CHECK_AS(DataError, doc_index[d] >= first && doc_index[d] <= want_last && (d > 0 || doc_index[0] == 0) &&
                               (d + 1 < num_docs || doc_index[d] == want_last),
                idx_path, ": document index ", d, " (", doc_index[d], ") is not a boundary between 0 and ", num_seq,
                " sequences in order");
  }
  bin_stamp_ = FileStamp::of(bin_path);
  const int64_t bin_bytes = bin_stamp_.bytes;
  SY_CHECK_AS(DataError, bin_bytes >= num_tokens_ * item_size_, bin_path, ": truncated: ", bin_bytes,
              " bytes for ", num_tokens_, " tokens");
}

void MegatronSource::read(int64_t offset, int64_t count, int64_t* out) const {
  bin_stamp_.check_unchanged();
  std::vector<char> raw(count * item_size_);
  read_bytes(prefix_ + ".bin", offset * item_size_, count * item_size_, raw.data());
  for (int64_t i = 0; i < count; ++i) {
    const char* p = raw.data() + i * item_size_;
    switch (dtype_code_) {
      case 1: out[i] = static_cast<uint8_t>(*p); break;
      case 2: out[i] = static_cast<int8_t>(*p); break;
      case 3: { int16_t v; std::memcpy(&v, p, 2); out[i] = v; break; }
      case 8: { uint16_t v; std::memcpy(&v, p, 2); out[i] = v; break; }
      case 4: { int32_t v; std::memcpy(&v, p, 4); out[i] = v; break; }
      default: { int64_t v; std::memcpy(&v, p, 8); out[i] = v; break; }
    }
  }
}

std::string MegatronSource::describe() const {
  return "megatron: " + prefix_ + ".{bin,idx} (" + std::to_string(num_documents_) + " documents, " +
         std::to_string(num_sequences()) + " sequences, " + std::to_string(num_tokens_) + " tokens)";
}

namespace {

std::unique_ptr<TokenSource> open_one(const core::DataConfig& config, const std::string& path, uint64_t seed) {
  switch (config.source) {
    case core::DataSource::kSynthetic: return std::make_unique<SyntheticCorpus>(config.synthetic_tokens, seed);
    case core::DataSource::kText: return std::make_unique<TextSource>(path, config.tokenizer);
    case core::DataSource::kTokens: return std::make_unique<TokenFileSource>(path, config.token_dtype);
    case core::DataSource::kMegatron: return std::make_unique<MegatronSource>(path);
  }
  throw ConfigError("data.source: unknown");
}

}  // namespace

std::vector<WeightedSource> open_token_sources(const core::DataConfig& config, uint64_t seed) {
  std::vector<WeightedSource> sources;
  if (config.blend.empty()) {
    sources.push_back({1.0, open_one(config, config.path, seed)});
    return sources;
  }
  std::istringstream in(config.blend);
  std::vector<std::string> words{std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
  SY_CHECK_AS(ConfigError, !words.empty() && words.size() % 2 == 0, "data.blend: expected 'weight path' pairs, got '",
              config.blend, "'");
  for (size_t i = 0; i < words.size(); i += 2) {
    char* end = nullptr;
    const double weight = std::strtod(words[i].c_str(), &end);
    SY_CHECK_AS(ConfigError, end && *end == '\0' && std::isfinite(weight) && weight > 0, "data.blend: weight '", words[i],
                "' (before ", words[i + 1], ") is not a positive number");
    sources.push_back({weight, open_one(config, words[i + 1], seed)});
  }
  return sources;
}

}  // namespace switchyard::data
