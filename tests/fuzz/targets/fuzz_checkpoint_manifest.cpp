// The checkpoint manifest and shard readers. The input is the serialized CheckpointManifest; the
// target wraps it in its envelope with the right checksum (so mutations reach the field checks, not
// only the checksum), beside a fixed 64 KiB shard file `rank_0.bin`, then reads the manifest and every tensor
// it names (offsets, sizes, dtypes, shapes and file names against the file).
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/crc32c.h"
#include "tests/fuzz/targets/fuzz_target.h"
#include "trainer/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace switchyard;
  static const std::string dir = [] {
    const std::string d = fuzz::scratch_dir() + "/checkpoint";
    std::filesystem::create_directories(d);
    std::vector<uint8_t> shard(1 << 16);
    for (size_t i = 0; i < shard.size(); ++i) shard[i] = static_cast<uint8_t>(i * 131 + 7);
    std::ofstream(d + "/rank_0.bin", std::ios::binary).write(reinterpret_cast<const char*>(shard.data()), 1 << 16);
    return d;
  }();
  proto::ManifestFile file;
  file.set_manifest(std::string(reinterpret_cast<const char*>(data), size));
  file.set_crc32c(core::crc32c(data, size));
  const std::string bytes = file.SerializeAsString();
  std::ofstream(dir + "/manifest.pb", std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  fuzz::expect_refusal_or_success([&] {
    const auto manifest = trainer::read_manifest(dir);
    trainer::verify_checkpoint(dir, manifest);
  });
  return 0;
}
