// Placement plan files: round trip, and every invalid plan refused with the file and layer named.
#include "placement/plan_file.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace switchyard::placement {
namespace {
namespace fs = std::filesystem;

std::string write(const std::string& name, const std::string& text) {
  const auto path = fs::temp_directory_path() / ("switchyard_plan_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(path) << text;
  return path.string();
}

std::string load_error(const std::string& text, int64_t layers = 2, int64_t experts = 4, int64_t ep = 2) {
  try {
    load_placement_plan(write("bad.yaml", text), layers, experts, ep);
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "accepted:\n" << text;
  return "";
}

TEST(PlacementPlan, RoundTrips) {
  const std::vector<ExpertPlacement> plan = {ExpertPlacement({1, 0, 0, 1}, 2), ExpertPlacement::contiguous(4, 2)};
  const auto path = write("plan.yaml", "");
  save_placement_plan(path, plan, 2);
  const auto loaded = load_placement_plan(path, 2, 4, 2);
  ASSERT_EQ(loaded.size(), 2u);
  EXPECT_EQ(loaded[0].owners(), plan[0].owners());
  EXPECT_EQ(loaded[1].owners(), plan[1].owners());
  EXPECT_EQ(loaded[0].experts_of(1), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(loaded[0].local_index(3), 1);
}

TEST(PlacementPlan, InvalidPlansAreRefused) {
  EXPECT_NE(load_error("layers: [[0, 0, 1, 1]]").find("has 1 layers, the model has 2 MoE layers"), std::string::npos);
  EXPECT_NE(load_error("layers: [[0, 0, 1, 1], [0, 1, 1]]").find("layer 1: expected a list of 4 ranks"),
            std::string::npos);
  EXPECT_NE(load_error("layers: [[0, 0, 1, 1], [0, 0, 0, 1]]").find("layer 1: placement: rank 0 holds 3 experts"),
            std::string::npos);
  EXPECT_NE(load_error("layers: [[0, 0, 1, 1], [0, 5, 1, 1]]").find("expert 1 is on rank 5, outside [0, 2)"),
            std::string::npos);
  EXPECT_NE(load_error("expert_parallel: 4\nlayers: [[0, 0, 1, 1], [0, 0, 1, 1]]").find("planned for expert_parallel 4"),
            std::string::npos);
  EXPECT_NE(load_error("layers: [[0, x, 1, 1], [0, 0, 1, 1]]").find("layer 0: expert 1: not a rank number"),
            std::string::npos);
  EXPECT_NE(load_error("experts: 3").find("needs a 'layers' list"), std::string::npos);
  EXPECT_NE(load_error("layers: [[0, 0").find("malformed YAML"), std::string::npos);
  try {
    load_placement_plan("/nonexistent/plan.yaml", 2, 4, 2);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/plan.yaml: cannot open placement plan"), std::string::npos);
  }
}

}  // namespace
}  // namespace switchyard::placement
