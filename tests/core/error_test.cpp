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

int fake_library_call(int status) { return status; }
std::string describe_status(int status) { return "status " + std::to_string(status); }

TEST(Error, CheckCallNamesTheRankTheCallAndTheLibrarysReason) {
  int calls = 0;
  SY_CHECK_CALL(CommError, 3, 0, describe_status, (++calls, fake_library_call(0)));
  EXPECT_EQ(calls, 1);  // the call runs once
  try {
    SY_CHECK_CALL(CommError, 3, 0, describe_status, fake_library_call(7));
    ADD_FAILURE() << "no throw";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("[rank 3] fake_library_call(7) failed at ", 0), 0u) << what;
    EXPECT_NE(what.find("error_test.cpp"), std::string::npos) << what;
    EXPECT_NE(what.find(": status 7"), std::string::npos) << what;
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
