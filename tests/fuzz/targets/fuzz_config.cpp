// The YAML config loader and --set parsing: the input's first line is a `--set key=value` override,
// the rest the YAML document.
#include <string>
#include <vector>

#include "core/config.h"
#include "tests/fuzz/targets/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const auto newline = input.find('\n');
  const std::string override_line = input.substr(0, newline);
  const std::string yaml = newline == std::string::npos ? "" : input.substr(newline + 1);
  switchyard::fuzz::expect_refusal_or_success([&] {
    const auto config = switchyard::core::load_config_text(yaml, {override_line});
    (void)switchyard::core::dump_config(config);
  });
  switchyard::fuzz::expect_refusal_or_success([&] { (void)switchyard::core::load_config_text(input); });
  return 0;
}
