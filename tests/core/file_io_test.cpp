// Atomic file replacement and the fault-injection hooks.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/fault_injection.h"
#include "core/file_io.h"

namespace switchyard::core {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/file_io_test.XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    try {
      core::remove_tree(path);
    } catch (const std::exception&) {  // a test left it unremovable: nothing to do in a destructor
    }
  }
};

TEST(FileIo, AtomicWriteReplacesTheFile) {
  TempDir dir;
  const auto file = (dir.path / "a.txt").string();
  write_file_atomically(file, "first\n");
  write_file_atomically(file, "second\n");
  EXPECT_EQ(read_file(file), "second\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}), 1) << "no temporary left";
}

TEST(FileIo, AFailedWriteKeepsTheOldFile) {
  TempDir dir;
  const auto file = (dir.path / "metrics.jsonl").string();
  write_file_atomically(file, "history\n");
  ::setenv("SWITCHYARD_FAULT_INJECT", "write_fail:metrics.jsonl", 1);
  try {
    write_file_atomically(file, "replacement\n");
    ADD_FAILURE() << "the injected write failure did not throw";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("metrics.jsonl: write failed (No space left on device)"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(append_to_file(file, "more\n"), IoError);
  ::unsetenv("SWITCHYARD_FAULT_INJECT");
  EXPECT_EQ(read_file(file), "history\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}), 1) << "no temporary left";
  append_to_file(file, "more\n");
  EXPECT_EQ(read_file(file), "history\nmore\n");
}

TEST(FileIo, AWriteIntoAMissingDirectoryNamesThePath) {
  EXPECT_THROW(write_file_atomically("/nonexistent/dir/file", "x"), IoError);
  EXPECT_THROW(read_file("/nonexistent/dir/file"), DataError);
}

TEST(FaultInjection, EntriesFilterByNameValueAndRank) {
  ::setenv("SWITCHYARD_FAULT_INJECT", "throw_at_step:5@1,nan_at_step:3,write_fail:a.bin", 1);
  set_fault_rank(0);
  EXPECT_FALSE(fault_at("throw_at_step", 5));
  EXPECT_TRUE(fault_at("nan_at_step", 3));
  EXPECT_FALSE(fault_at("nan_at_step", 4));
  EXPECT_TRUE(fault_named("write_fail", "a.bin"));
  EXPECT_FALSE(fault_named("write_fail", "b.bin"));
  set_fault_rank(1);
  EXPECT_TRUE(fault_at("throw_at_step", 5));
  ::unsetenv("SWITCHYARD_FAULT_INJECT");
  EXPECT_FALSE(fault_at("nan_at_step", 3));
}

}  // namespace
}  // namespace switchyard::core
