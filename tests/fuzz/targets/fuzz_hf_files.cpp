// The Hugging Face readers. First byte: which one: even, a safetensors file (every tensor read back);
// odd, a config.json (parsed as each family would be imported).
#include "interop/hf_config.h"
#include "interop/safetensors.h"
#include "tests/fuzz/targets/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace switchyard;
  if (size < 1) return 0;
  const bool config = data[0] % 2 == 1;
  ++data;
  --size;
  fuzz::expect_refusal_or_success([&] {
    if (config) {
      interop::parse_hf_config(std::string(reinterpret_cast<const char*>(data), size), "config.json", 0);
    } else {
      const interop::SafetensorsFile file(fuzz::write_scratch("model.safetensors", data, size));
      for (const auto& [name, entry] : file.entries()) file.tensor(name);
    }
  });
  return 0;
}
