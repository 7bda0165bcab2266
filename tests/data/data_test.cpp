// Every reader on files it writes itself; the batch order depends on seed and step, not rank count.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/file_io.h"
#include "core/error.h"
#include "data/batch_sampler.h"
#include "data/megatron_writer.h"
#include "data/token_source.h"

namespace switchyard::data {
namespace {
namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("switchyard_data_test_" + name + "_" + std::to_string(::getpid()));
  core::remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<int64_t> read_all(const TokenSource& s) {
  std::vector<int64_t> out(s.num_tokens());
  s.read(0, s.num_tokens(), out.data());
  return out;
}

TEST(ByteTokenizer, RoundTrips) {
  const std::string text = "Fair is foul, and foul is fair: \xc3\xa9t\xc3\xa9\n";
  const auto tokens = byte_tokenize(text);
  EXPECT_EQ(tokens.size(), text.size());
  EXPECT_EQ(byte_detokenize(tokens), text);
  for (auto t : tokens) EXPECT_LT(t, 256);
}

TEST(TextSource, FileAndDirectory) {
  const auto dir = temp_dir("text");
  std::ofstream(dir / "b.txt") << "second";
  std::ofstream(dir / "a.txt") << "first ";
  TextSource file((dir / "a.txt").string());
  EXPECT_EQ(byte_detokenize(read_all(file)), "first ");
  TextSource all(dir.string());
  EXPECT_EQ(byte_detokenize(read_all(all)), "first second");  // name order
  EXPECT_THROW(TextSource((dir / "missing.txt").string()), DataError);
}

TEST(TokenFileSource, Uint16AndUint32) {
  const auto dir = temp_dir("tokens");
  const std::vector<uint16_t> small = {1, 2, 65535, 7};
  std::ofstream(dir / "t16.bin", std::ios::binary).write(reinterpret_cast<const char*>(small.data()), 8);
  const std::vector<uint32_t> big = {100000, 3, 4};
  std::ofstream(dir / "t32.bin", std::ios::binary).write(reinterpret_cast<const char*>(big.data()), 12);
  TokenFileSource s16((dir / "t16.bin").string(), core::TokenDtype::kUint16);
  EXPECT_EQ(read_all(s16), (std::vector<int64_t>{1, 2, 65535, 7}));
  TokenFileSource s32((dir / "t32.bin").string(), core::TokenDtype::kUint32);
  EXPECT_EQ(read_all(s32), (std::vector<int64_t>{100000, 3, 4}));
  try {
    TokenFileSource bad((dir / "t32.bin").string(), core::TokenDtype::kUint16);
    std::ofstream(dir / "odd.bin", std::ios::binary) << "abc";
    TokenFileSource odd((dir / "odd.bin").string(), core::TokenDtype::kUint16);
    FAIL() << "odd-sized file accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("odd.bin: size 3 is not a multiple of 2"), std::string::npos) << e.what();
  }
}

TEST(MegatronSource, ReadsTheIndexedFormat) {
  const auto dir = temp_dir("megatron");
  const std::vector<std::vector<int64_t>> docs = {{5, 6, 7}, {8}, {9, 10, 11, 12}};
  write_megatron_dataset((dir / "corpus").string(), docs);
  MegatronSource m((dir / "corpus").string());
  EXPECT_EQ(m.num_documents(), 3);
  EXPECT_EQ(m.num_sequences(), 3);
  EXPECT_EQ(read_all(m), (std::vector<int64_t>{5, 6, 7, 8, 9, 10, 11, 12}));
  std::vector<int64_t> middle(3);
  m.read(2, 3, middle.data());
  EXPECT_EQ(middle, (std::vector<int64_t>{7, 8, 9}));
  // A file that is not an index, and a truncated .bin, are refused with the file named.
  std::ofstream(dir / "bad.idx") << "NOTANINDEX-------------------------------";
  std::ofstream(dir / "bad.bin") << "";
  try {
    MegatronSource bad((dir / "bad").string());
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.idx: not a Megatron index"), std::string::npos) << e.what();
  }
  fs::resize_file(dir / "corpus.bin", 10);
  try {
    MegatronSource truncated((dir / "corpus").string());
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("corpus.bin: truncated"), std::string::npos) << e.what();
  }
}

TEST(SyntheticCorpus, DeterministicWithDomainsAndEntropy) {
  SyntheticCorpus a(50000, 3), b(50000, 3), c(50000, 4);
  EXPECT_EQ(a.text(), b.text());
  EXPECT_NE(a.text(), c.text());
  EXPECT_NE(a.text().find("+"), std::string::npos);     // arithmetic
  EXPECT_NE(a.text().find("sort"), std::string::npos);  // sorting
  EXPECT_NE(a.text().find("(("), std::string::npos);    // brackets
  EXPECT_NE(a.text().find(".\n"), std::string::npos);   // Markov text
  EXPECT_GT(a.unigram_entropy(), 2.5);
  EXPECT_LT(a.unigram_entropy(), std::log(256.0));
}

TEST(BatchSampler, OrderIsInvariantToRankCount) {
  SyntheticCorpus corpus(20000, 1);
  BatchSampler sampler(corpus, 0, 20000, 16, 8, 42, 256);
  for (int64_t step : {0, 3, 150}) {  // step 150 crosses an epoch (1249 windows / 8 per step)
    const auto global = sampler.batch(step, 0, 8);
    for (int world : {1, 2, 4, 8}) {
      std::vector<torch::Tensor> parts;
      for (int r = 0; r < world; ++r) parts.push_back(sampler.batch(step, r * (8 / world), 8 / world));
      EXPECT_TRUE(torch::equal(torch::cat(parts), global)) << "world " << world << " step " << step;
    }
  }
  BatchSampler again(corpus, 0, 20000, 16, 8, 42, 256);
  EXPECT_TRUE(torch::equal(again.batch(7, 0, 8), sampler.batch(7, 0, 8)));
  EXPECT_FALSE(torch::equal(sampler.batch(7, 0, 8), sampler.batch(8, 0, 8)));
}

TEST(BatchSampler, EachEpochVisitsEveryWindowOnce) {
  SyntheticCorpus corpus(4000, 1);
  BatchSampler sampler(corpus, 0, 4000, 16, 7, 5, 256);
  std::vector<int> seen(sampler.num_windows(), 0);
  for (int64_t j = 0; j < sampler.num_windows(); ++j) ++seen[sampler.window_of(j / 7, j % 7).second];
  for (int s : seen) EXPECT_EQ(s, 1);
}

TEST(BatchSampler, ABlendDrawsItsWeightsInTheSameOrderAtAnyRankCount) {
  // Two corpora at 0.7 / 0.3 (issue 22): every prefix of the run holds each share to within one
  // sequence (greedy blending), 10k sequences within 1% (here exactly), rank slices equal the global
  // batch, the order is the same after a jump back (a resume), and each part's windows are its own
  // epochs in their own shuffles.
  SyntheticCorpus a(40000, 1), b(30000, 2);
  const std::vector<BatchSampler::Part> parts = {{&a, 0, 40000, 0.7}, {&b, 0, 30000, 0.3}};
  BatchSampler sampler(parts, 16, 16, 9, 256);
  EXPECT_EQ(sampler.num_windows(), 2499 + 1874);
  int64_t from_a = 0;
  std::vector<std::vector<int>> seen = {std::vector<int>(2499, 0), std::vector<int>(1874, 0)};
  for (int64_t j = 0; j < 10000; ++j) {
    const auto [part, window] = sampler.window_of(j / 16, j % 16);
    from_a += part == 0;
    if (j < 2499 * 10 / 7) ++seen[part][window];
    EXPECT_LE(std::abs(0.7 * static_cast<double>(j + 1) - static_cast<double>(from_a)), 1.0) << j;
  }
  EXPECT_NEAR(static_cast<double>(from_a) / 10000, 0.7, 0.01);
  for (int s : seen[0]) EXPECT_LE(s, 1);  // within the first epoch of part 0: no window twice
  for (int64_t step : {0, 5, 400}) {
    const auto global = sampler.batch(step, 0, 16);
    for (int world : {1, 2, 4}) {
      std::vector<torch::Tensor> slices;
      for (int r = 0; r < world; ++r) slices.push_back(sampler.batch(step, r * (16 / world), 16 / world));
      EXPECT_TRUE(torch::equal(torch::cat(slices), global)) << "world " << world << " step " << step;
    }
  }
  BatchSampler resumed(parts, 16, 16, 9, 256);  // a fresh sampler jumping to step 400 directly
  EXPECT_TRUE(torch::equal(resumed.batch(400, 0, 16), sampler.batch(400, 0, 16)));
  EXPECT_TRUE(torch::equal(resumed.batch(3, 0, 16), sampler.batch(3, 0, 16)));  // and back
  // One part of weight 1 is the single-source order.
  BatchSampler one({{&a, 0, 40000, 1.0}}, 16, 16, 9, 256), plain(a, 0, 40000, 16, 16, 9, 256);
  EXPECT_TRUE(torch::equal(one.batch(11, 0, 16), plain.batch(11, 0, 16)));
}

TEST(BatchSampler, TokensOutsideTheVocabularyAreNamed) {
  SyntheticCorpus corpus(4000, 1);
  BatchSampler sampler(corpus, 0, 4000, 16, 4, 5, 50);
  try {
    sampler.batch(0, 0, 4);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("outside model.vocab_size 50"), std::string::npos) << e.what();
  }
}

/// The DataError message of `make()`, or "" if it did not throw.
template <typename F>
std::string data_error(F make) {
  try {
    make();
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}

TEST(DataFiles, FifosAndDevicesAreRefusedNotRead) {
  const auto dir = temp_dir("fifo");
  const auto fifo = (dir / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const std::string& path : {fifo, std::string("/dev/zero")}) {
    EXPECT_NE(data_error([&] { TextSource s(path); }).find(path + ": not a regular file"), std::string::npos) << path;
    EXPECT_NE(data_error([&] { TokenFileSource s(path, core::TokenDtype::kUint16); }).find(path + ": not a regular file"),
              std::string::npos)
        << path;
  }
  EXPECT_NE(data_error([&] { TextSource s((dir / "missing").string()); }).find("no such file"), std::string::npos);
}

/// Writes a Megatron index by hand: header, the given counts, then `body` (lengths, pointers, documents).
void write_index(const fs::path& path, uint64_t num_seq, uint64_t num_docs, const std::vector<int64_t>& lengths,
                 const std::vector<int64_t>& pointers, const std::vector<int64_t>& docs) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t version = 1;
  const uint8_t code = 8;
  out.write("MMIDIDX\0\0", 9);
  out.write(reinterpret_cast<const char*>(&version), 8);
  out.write(reinterpret_cast<const char*>(&code), 1);
  out.write(reinterpret_cast<const char*>(&num_seq), 8);
  out.write(reinterpret_cast<const char*>(&num_docs), 8);
  for (int64_t l : lengths) {
    const auto v = static_cast<int32_t>(l);
    out.write(reinterpret_cast<const char*>(&v), 4);
  }
  out.write(reinterpret_cast<const char*>(pointers.data()), static_cast<std::streamsize>(8 * pointers.size()));
  out.write(reinterpret_cast<const char*>(docs.data()), static_cast<std::streamsize>(8 * docs.size()));
}

TEST(MegatronSource, HostileIndexesAreRefusedBeforeAllocating) {
  const auto dir = temp_dir("hostile_idx");
  write_megatron_dataset((dir / "c").string(), {{1, 2, 3}, {4, 5}});  // the .bin the indexes below describe
  const auto refusal = [&](uint64_t num_seq, uint64_t num_docs, const std::vector<int64_t>& lengths,
                           const std::vector<int64_t>& pointers, const std::vector<int64_t>& docs) {
    write_index(dir / "c.idx", num_seq, num_docs, lengths, pointers, docs);
    return data_error([&] { MegatronSource m((dir / "c").string()); });
  };
  // A sequence count of 2^62 (the index holds two): refused by size, not by a failed allocation.
  EXPECT_NE(refusal(uint64_t{1} << 62, 3, {3, 2}, {0, 6}, {0, 1, 2}).find("do not fit its"), std::string::npos);
  EXPECT_NE(refusal(2, uint64_t{1} << 61, {3, 2}, {0, 6}, {0, 1, 2}).find("do not fit its"), std::string::npos);
  // A negative length whose pointers were made to agree with it.
  EXPECT_NE(refusal(2, 3, {-3, 2}, {0, -6}, {0, 1, 2}).find("sequence 0 has length -3"), std::string::npos);
  // No documents at all, and document boundaries out of order or not ending at the last sequence.
  EXPECT_NE(refusal(0, 1, {}, {}, {0}).find("holds no documents"), std::string::npos);
  EXPECT_NE(refusal(2, 3, {3, 2}, {0, 6}, {0, 2, 1}).find("document index 2"), std::string::npos);
  EXPECT_NE(refusal(2, 3, {3, 2}, {0, 6}, {0, 1, 1}).find("document index 2"), std::string::npos);
  EXPECT_EQ(refusal(2, 3, {3, 2}, {0, 6}, {0, 1, 2}), "");  // the well-formed one is read
}

TEST(TokenFileSource, AFileChangedUnderTheJobIsNamedAtItsNextRead) {
  const auto dir = temp_dir("changed");
  const std::vector<uint16_t> tokens(64, 7);
  const auto path = dir / "t.bin";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(tokens.data()), 128);
  TokenFileSource source(path.string(), core::TokenDtype::kUint16);
  std::vector<int64_t> out(4);
  source.read(0, 4, out.data());
  std::ofstream(path, std::ios::binary | std::ios::app).write(reinterpret_cast<const char*>(tokens.data()), 8);
  const auto what = data_error([&] { source.read(0, 4, out.data()); });
  EXPECT_NE(what.find(path.string() + ": changed while the job reads it"), std::string::npos) << what;
}

}  // namespace
}  // namespace switchyard::data
