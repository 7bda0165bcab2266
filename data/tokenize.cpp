// SentencePiece tokenization into Megatron indexed datasets.
#include "data/tokenize.h"

#include <dlfcn.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>
#include <type_traits>

#include "core/build_info.h"
#include "core/error.h"
#include "data/megatron_writer.h"

namespace switchyard::data {
namespace fs = std::filesystem;

bool has_sentencepiece() { return SWITCHYARD_HAS_SENTENCEPIECE; }

/// The functions of the SentencePiece module (data/sentencepiece_module.cpp), loaded once.
struct SentencePieceTokenizer::Impl {
  struct Api {
    void* (*load)(const char*, char*, size_t) = nullptr;
    int (*encode)(void*, const char*, size_t, int**, size_t*, char*, size_t) = nullptr;
    void (*free_ids)(int*) = nullptr;
    int (*vocab_size)(void*) = nullptr;
    int (*eos_id)(void*) = nullptr;
    void (*close)(void*) = nullptr;
  };
  static const Api& api() {
    static const Api loaded = [] {
#if SWITCHYARD_HAS_SENTENCEPIECE
      // The module beside the executable, else where the build put it.
      std::string path = (fs::read_symlink("/proc/self/exe").parent_path() / "libswitchyard_sentencepiece.so").string();
      if (!fs::exists(path)) path = SWITCHYARD_SENTENCEPIECE_MODULE;
      int flags = RTLD_NOW | RTLD_LOCAL;
#if !defined(__SANITIZE_ADDRESS__)
      flags |= RTLD_DEEPBIND;  // its protobuf-lite binds to itself (the sanitizers refuse deep binding)
#endif
      void* module = dlopen(path.c_str(), flags);
      SY_CHECK_AS(UsageError, module != nullptr, "SentencePiece: cannot load ", path, " (", dlerror(), ")");
      Api a;
      const auto bind = [&](auto& fn, const char* name) {
        fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(module, name));
        SY_CHECK_AS(UsageError, fn != nullptr, "SentencePiece: ", path, " lacks ", name);
      };
      bind(a.load, "sy_spm_load");
      bind(a.encode, "sy_spm_encode");
      bind(a.free_ids, "sy_spm_free");
      bind(a.vocab_size, "sy_spm_vocab_size");
      bind(a.eos_id, "sy_spm_eos_id");
      bind(a.close, "sy_spm_close");
      return a;
#else
      throw UsageError("this build has no SentencePiece (install libsentencepiece-dev and rebuild)");
      return Api{};
#endif
    }();
    return loaded;
  }
  void* handle = nullptr;
  ~Impl() {
    if (handle) api().close(handle);
  }
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : impl_(std::make_unique<Impl>()), path_(model_path) {
  SY_CHECK_AS(DataError, fs::is_regular_file(model_path), model_path, ": no SentencePiece model here");
  char err[512] = "";
  impl_->handle = Impl::api().load(model_path.c_str(), err, sizeof(err));
  SY_CHECK_AS(DataError, impl_->handle != nullptr, model_path, ": not a SentencePiece model (", err, ")");
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  int* ids = nullptr;
  size_t n = 0;
  char err[512] = "";
  SY_CHECK_AS(DataError, Impl::api().encode(impl_->handle, text.data(), text.size(), &ids, &n, err, sizeof(err)) == 0,
              path_, ": encoding failed (", err, ")");
  std::vector<int32_t> out(ids, ids + n);
  Impl::api().free_ids(ids);
  return out;
}

int64_t SentencePieceTokenizer::vocab_size() const { return Impl::api().vocab_size(impl_->handle); }
int32_t SentencePieceTokenizer::eos_id() const { return Impl::api().eos_id(impl_->handle); }

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

namespace {

/// One document of an input, where it came from (for messages).
struct Document {
  std::string text;
  int64_t line;
};

/// Reads documents of `path` in batches: JSONL (.jsonl, .json) takes `text_key` of each line's
/// object, any other file each non-empty line.
class DocumentReader {
 public:
  DocumentReader(const std::string& path, const TokenizeOptions& options)
      : path_(path), options_(options), in_(path, std::ios::binary) {
    SY_CHECK_AS(DataError, fs::is_regular_file(path) && in_.good(), path, ": cannot read (not a regular file?)");
    const auto ext = fs::path(path).extension().string();
    jsonl_ = ext == ".jsonl" || ext == ".json";
  }
  /// Up to `n` more documents; empty at the end. `bytes` gets the bytes read.
  std::vector<Document> next(size_t n, int64_t& bytes) {
    std::vector<Document> docs;
    std::string line;
    while (docs.size() < n && std::getline(in_, line)) {
      ++line_number_;
      bytes += static_cast<int64_t>(line.size()) + 1;
      SY_CHECK_AS(DataError, static_cast<int64_t>(line.size()) <= options_.max_document_bytes, path_, ":", line_number_,
                  ": a document of ", line.size(), " bytes exceeds the limit of ", options_.max_document_bytes,
                  " (--max-document-bytes)");
      if (!jsonl_) {
        if (!line.empty()) docs.push_back({std::move(line), line_number_});
        continue;
      }
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      SY_CHECK_AS(DataError, j.is_object() && j.contains(options_.text_key) && j[options_.text_key].is_string(), path_,
                  ":", line_number_, ": not a JSON object with a string '", options_.text_key, "'");
      docs.push_back({j[options_.text_key].get<std::string>(), line_number_});
    }
    SY_CHECK_AS(DataError, !in_.bad(), path_, ": read failed");
    return docs;
  }

 private:
  std::string path_;
  const TokenizeOptions& options_;
  std::ifstream in_;
  bool jsonl_ = false;
  int64_t line_number_ = 0;
};

/// A progress bar on stderr, redrawn at most every 0.2 s on a terminal (every 10% elsewhere).
class Progress {
 public:
  Progress(bool on, int64_t total) : on_(on), total_(std::max<int64_t>(total, 1)), tty_(isatty(2)) {}
  void update(int64_t done, int64_t tokens, bool last = false) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    const double fraction = std::min(1.0, static_cast<double>(done) / static_cast<double>(total_));
    const int tenth = static_cast<int>(fraction * 10);
    if (!last && (tty_ ? now - drawn_ < std::chrono::milliseconds(200) : tenth <= last_tenth_)) return;
    drawn_ = now;
    last_tenth_ = tenth;
    const double s = std::chrono::duration<double>(now - start_).count();
    const int width = 30, filled = static_cast<int>(fraction * width);
    std::fprintf(stderr, "%stokenize [%s%s] %3.0f%%  %.1f MB  %lld tokens  %.1f MB/s%s", tty_ ? "\r" : "",
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), fraction * 100,
                 static_cast<double>(done) / 1e6, static_cast<long long>(tokens), static_cast<double>(done) / 1e6 / std::max(s, 1e-9),
                 tty_ && !last ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  bool on_;
  int64_t total_;
  bool tty_;
  int last_tenth_ = -1;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), drawn_{};
};

}  // namespace

TokenizeSummary tokenize_files(const TokenizeOptions& options) {
  SY_CHECK_AS(UsageError, !options.inputs.empty(), "tokenize: no --input files");
  const SentencePieceTokenizer tokenizer(options.tokenizer);
  TokenizeSummary summary;
  summary.vocab_size = tokenizer.vocab_size();
  summary.eod_id = options.eod_id >= 0 ? options.eod_id : tokenizer.eos_id();
  SY_CHECK_AS(UsageError, summary.eod_id >= 0, options.tokenizer, ": the model has no end-of-sentence token; pass --eod-id");
  SY_CHECK_AS(UsageError, summary.eod_id < summary.vocab_size, "--eod-id ", summary.eod_id, " is outside the vocabulary of ",
              summary.vocab_size, " (", options.tokenizer, ")");
  int64_t total_bytes = 0;
  for (const auto& input : options.inputs) {
    std::error_code ec;
    const auto size = fs::file_size(input, ec);
    SY_CHECK_AS(DataError, !ec && fs::is_regular_file(input), input, ": cannot read (", ec ? ec.message() : "not a regular file", ")");
    total_bytes += static_cast<int64_t>(size);
  }
  const auto start = std::chrono::steady_clock::now();
  MegatronWriter writer(options.out_prefix, summary.vocab_size);
  Progress progress(options.progress, total_bytes);
  const int threads = std::max(1, options.threads);
  for (const auto& input : options.inputs) {
    DocumentReader reader(input, options);
    for (;;) {
      // A batch per thread round: each thread encodes a contiguous slice; written in input order.
      auto docs = reader.next(static_cast<size_t>(1024 * threads), summary.bytes);
      if (docs.empty()) break;
      std::vector<std::vector<int32_t>> encoded(docs.size());
      std::vector<std::exception_ptr> errors(threads);
      std::vector<std::thread> pool;
      const size_t per = (docs.size() + threads - 1) / threads;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          try {
            for (size_t i = t * per; i < std::min(docs.size(), (t + 1) * per); ++i) encoded[i] = tokenizer.encode(docs[i].text);
          } catch (...) {
            errors[t] = std::current_exception();
          }
        });
      }
      for (auto& th : pool) th.join();
      for (const auto& e : errors) {
        if (e) std::rethrow_exception(e);
      }
      for (auto& ids : encoded) {
        if (ids.empty()) continue;
        ids.push_back(static_cast<int32_t>(summary.eod_id));
        writer.add_document(ids);
      }
      progress.update(summary.bytes, writer.tokens());
    }
  }
  SY_CHECK_AS(DataError, writer.documents() > 0, "tokenize: the inputs hold no document");
  writer.finish();
  progress.update(summary.bytes, writer.tokens(), /*last=*/true);
  summary.documents = writer.documents();
  summary.tokens = writer.tokens();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

}  // namespace switchyard::data
