// The SentencePiece module: a shared object that `data/tokenize.cpp` loads with dlopen (local, deep
// binding). Debian's libsentencepiece carries its own copy of protobuf-lite and exports it; linked
// into a process beside LibTorch's libprotobuf the two copies bind to each other and the process
// dies in its static initializers. Loaded this way its symbols stay out of the global scope and bind
// to their own definitions first. A C interface, so nothing of SentencePiece's crosses the boundary.
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace {
void copy_error(const std::string& text, char* err, size_t err_len) {
  if (err && err_len > 0) {
    std::strncpy(err, text.c_str(), err_len - 1);
    err[err_len - 1] = '\0';
  }
}
}  // namespace

extern "C" {

void* sy_spm_load(const char* path, char* err, size_t err_len) {
  auto* p = new sentencepiece::SentencePieceProcessor();
  const auto status = p->Load(path);
  if (!status.ok()) {
    copy_error(status.ToString(), err, err_len);
    delete p;
    return nullptr;
  }
  return p;
}

/// Encodes `len` bytes of `text`; *ids (malloc'ed, free with sy_spm_free) gets *n ids. 0 on success.
int sy_spm_encode(void* handle, const char* text, size_t len, int** ids, size_t* n, char* err, size_t err_len) {
  std::vector<int> out;
  const auto status = static_cast<sentencepiece::SentencePieceProcessor*>(handle)->Encode(std::string_view(text, len), &out);
  if (!status.ok()) {
    copy_error(status.ToString(), err, err_len);
    return 1;
  }
  *n = out.size();
  *ids = static_cast<int*>(std::malloc(std::max<size_t>(1, out.size()) * sizeof(int)));
  if (!*ids) return 1;
  std::memcpy(*ids, out.data(), out.size() * sizeof(int));
  return 0;
}

void sy_spm_free(int* ids) { std::free(ids); }
int sy_spm_vocab_size(void* handle) { return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->GetPieceSize(); }
int sy_spm_eos_id(void* handle) { return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->eos_id(); }
void sy_spm_close(void* handle) { delete static_cast<sentencepiece::SentencePieceProcessor*>(handle); }

}  // extern "C"
