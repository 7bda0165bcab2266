// The safetensors reader and writer: round trips, and every malformed file refused naming the file
// and the tensor (issue 21).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "core/file_io.h"
#include "core/error.h"
#include "interop/hf_checkpoint.h"
#include "interop/safetensors.h"
#include "tests/test_util.h"

namespace switchyard::interop {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("sy_safetensors_" + name + "_" + std::to_string(::getpid()));
  core::remove_tree(dir);
  fs::create_directories(dir);
  return dir.string();
}

/// A safetensors file from a header (JSON text) and `data_bytes` bytes of data.
std::string write_raw(const std::string& path, const std::string& header, size_t data_bytes, uint64_t claimed_length = 0) {
  std::string bytes(8, '\0');
  const uint64_t n = claimed_length ? claimed_length : header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  bytes += header;
  bytes.append(data_bytes, '\x01');
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  const auto dir = temp_dir("roundtrip");
  const auto path = dir + "/t.safetensors";
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f32", torch::randn({3, 5})},
      {"bf16", torch::randn({7}).to(torch::kBFloat16)},
      {"f16", torch::randn({2, 2, 2}).to(torch::kHalf)},
      {"f64", torch::randn({1}).to(torch::kFloat64)},
      {"i64", torch::arange(6).view({2, 3})},
      {"scalar", torch::tensor(3.5f).reshape({})},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::randn({4, 6}).t()},
  };
  write_safetensors(path, tensors, {{"format", "pt"}});
  const SafetensorsFile file(path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.entries().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const auto read = file.tensor(name);
    EXPECT_EQ(read.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(read, t)) << name;
  }
  // The data section starts 8-byte aligned, as the reference writer pads it.
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, RefusesMalformedFilesNamingFileAndTensor) {
  const auto dir = temp_dir("corrupt");
  const auto ok_tensor = R"("w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]})";
  struct Case {
    std::string name, header;
    size_t data;
    uint64_t claimed;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"length_past_end", std::string("{") + ok_tensor + "}", 16, 1u << 20, "bad header length 1048576"},
      {"length_huge", std::string("{") + ok_tensor + "}", 16, ~0ull, "bad header length"},
      {"not_json", "{\"w\": [", 16, 0, "bad header: not a JSON object"},
      {"not_object", "[1, 2]", 16, 0, "bad header: not a JSON object"},
      {"offsets_past_end", R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 64]}})", 16, 0,
       "tensor w: data_offsets [0, 64] past the end of the data (16 bytes)"},
      {"offsets_reversed", R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", 16, 0, "tensor w: data_offsets [8, 0]"},
      {"wrong_dtype", R"({"w": {"dtype": "F8_E9", "shape": [2, 2], "data_offsets": [0, 16]}})", 16, 0,
       "tensor w: unsupported dtype 'F8_E9'"},
      {"dtype_size_mismatch", R"({"w": {"dtype": "F64", "shape": [2, 2], "data_offsets": [0, 16]}})", 16, 0,
       "tensor w: data_offsets cover 16 bytes, shape [2,2] of F64 needs 32"},
      {"negative_shape", R"({"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 16]}})", 16, 0,
       "tensor w: shape [-1,2] is not a list of sizes"},
      {"huge_shape", R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}})", 16, 0,
       "tensor w: shape [4294967296,4294967296] needs more bytes than the file has"},
      {"missing_offsets", R"({"w": {"dtype": "F32", "shape": [2, 2]}})", 16, 0, "tensor w: missing data_offsets"},
      {"overlap",
       R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
       16, 0, "overlap at byte 8"},
      {"gap", R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 16, 0, "leave a gap at byte 8"},
      {"trailing", R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 16, 0, "8 bytes after the last tensor"},
      {"bad_metadata", R"({"__metadata__": {"format": 3}})", 0, 0, "__metadata__.format is not a string"},
  };
  for (const auto& c : cases) {
    const auto path = write_raw(dir + "/" + c.name + ".safetensors", c.header, c.data, c.claimed);
    const auto message = testing::refusal<DataError>([&] { SafetensorsFile file(path); });
    EXPECT_NE(message.find(path + ": "), std::string::npos) << c.name << ": " << message;
    EXPECT_NE(message.find(c.expect), std::string::npos) << c.name << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << c.name;
  }
  const auto short_file = write_raw(dir + "/short.safetensors", "", 0);
  fs::resize_file(short_file, 5);
  EXPECT_NE(testing::refusal<DataError>([&] { SafetensorsFile file(short_file); }).find("shorter than the header length"), std::string::npos);
  EXPECT_NE(testing::refusal<DataError>([&] { SafetensorsFile file(dir); }).find("not a regular file"), std::string::npos);
  write_safetensors(dir + "/good.safetensors", {{"w", torch::ones({2})}});
  const SafetensorsFile good(dir + "/good.safetensors");
  EXPECT_EQ(testing::refusal<DataError>([&] { good.tensor("v"); }), dir + "/good.safetensors: no tensor v");
}

TEST(HfCheckpointDir, ShardsAboveTheLimitAndReadsThemBack) {
  const auto dir = temp_dir("shards") + "/model";
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back("t" + std::to_string(i), torch::randn({10, 10}));  // 400 bytes each
  const auto files = write_hf_checkpoint(dir, tensors, "{}\n", 900);
  EXPECT_EQ(files.size(), 5u);  // 3 shards (2 + 2 + 1 tensors), the index, config.json
  EXPECT_TRUE(fs::exists(dir + "/model-00003-of-00003.safetensors"));
  const auto index = nlohmann::json::parse(std::ifstream(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), 2000);
  EXPECT_EQ(index["weight_map"]["t4"].get<std::string>(), "model-00003-of-00003.safetensors");
  const HfCheckpoint read(dir);
  for (const auto& [name, t] : tensors) EXPECT_TRUE(torch::equal(read.tensor(name), t)) << name;
  EXPECT_EQ(read.file_of("t0"), dir + "/model-00001-of-00003.safetensors");
  EXPECT_THROW(write_hf_checkpoint(dir, tensors, "{}", 900), IoError);  // not empty: never overwritten

  // An index naming a tensor its shard lacks, or a file outside the directory, is refused by name.
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map": {"t9": "model-00001-of-00003.safetensors"}})";
  EXPECT_NE(testing::refusal<DataError>([&] { HfCheckpoint c(dir); }).find("model-00001-of-00003.safetensors: no tensor t9"), std::string::npos);
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map": {"t0": "../x.safetensors"}})";
  EXPECT_NE(testing::refusal<DataError>([&] { HfCheckpoint c(dir); }).find("weight_map.t0 names '../x.safetensors'"), std::string::npos);
}

}  // namespace
}  // namespace switchyard::interop
