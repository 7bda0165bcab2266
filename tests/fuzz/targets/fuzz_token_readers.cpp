// The data readers. First byte: which reader (and dtype); for Megatron, the next 4 bytes split the
// rest into the .idx and the .bin. Every token a reader accepts is read back.
#include <cstring>
#include <vector>

#include "data/token_source.h"
#include "tests/fuzz/targets/fuzz_target.h"

namespace {

void read_everything(const switchyard::data::TokenSource& source) {
  std::vector<int64_t> out(1024);
  for (int64_t at = 0; at < source.num_tokens(); at += 1024) {
    const int64_t n = std::min<int64_t>(1024, source.num_tokens() - at);
    source.read(at, n, out.data());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace switchyard;
  if (size < 1) return 0;
  const int which = data[0] % 4;
  ++data;
  --size;
  fuzz::expect_refusal_or_success([&] {
    if (which == 0) {
      data::TextSource text(fuzz::write_scratch("text.txt", data, size));
      read_everything(text);
    } else if (which == 1 || which == 2) {
      data::TokenFileSource tokens(fuzz::write_scratch("tokens.bin", data, size),
                                   which == 1 ? core::TokenDtype::kUint16 : core::TokenDtype::kUint32);
      read_everything(tokens);
    } else {
      uint32_t idx_bytes = 0;
      if (size >= 4) std::memcpy(&idx_bytes, data, 4);
      const size_t rest = size >= 4 ? size - 4 : 0;
      const size_t idx = std::min<size_t>(idx_bytes, rest);
      fuzz::write_scratch("corpus.idx", data + (size - rest), idx);
      fuzz::write_scratch("corpus.bin", data + (size - rest) + idx, rest - idx);
      data::MegatronSource megatron(fuzz::scratch_dir() + "/corpus");
      read_everything(megatron);
    }
  });
  return 0;
}
