// Error macros carry their message; exit codes separate bad input (2) from failures (1).
#include "core/error.h"

#include <gtest/gtest.h>

namespace switchyard {
namespace {

TEST(Error, CheckThrowsWithStreamedMessage) {
  const int got = 0;
  try {
    SY_CHECK(got > 0, "model.moe.top_k: must be >= 1, got ", got);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "model.moe.top_k: must be >= 1, got 0");
  }
  EXPECT_NO_THROW(SY_CHECK(true, "unused"));
}

TEST(Error, CheckAsThrowsChosenType) {
  EXPECT_THROW(SY_CHECK_AS(DataError, false, "f.bin: truncated"), DataError);
  EXPECT_THROW(SY_CHECK_AS(CheckpointError, false, "x"), CheckpointError);
}

TEST(Error, AssertNamesExpressionAndLocation) {
  try {
    SY_ASSERT(1 + 1 == 3, "math");
    FAIL();
  } catch (const InternalError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("1 + 1 == 3"), std::string::npos);
    EXPECT_NE(what.find("error_test.cpp"), std::string::npos);
    EXPECT_NE(what.find("math"), std::string::npos);
  }
}

TEST(Error, ExitCodes) {
  EXPECT_EQ(exit_code_for(ConfigError("x")), 2);
  EXPECT_EQ(exit_code_for(UsageError("x")), 2);
  EXPECT_EQ(exit_code_for(DataError("x")), 2);
  EXPECT_EQ(exit_code_for(CheckpointError("x")), 2);
  EXPECT_EQ(exit_code_for(CommError("x")), 1);
  EXPECT_EQ(exit_code_for(InternalError("x")), 1);
  EXPECT_EQ(exit_code_for(std::runtime_error("x")), 1);
}

}  // namespace
}  // namespace switchyard
