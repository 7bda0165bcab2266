// Routing trace files: a round trip keeps every field; junk and missing files are refused by name.
#include "core/file_io.h"
#include "placement/routing_trace.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace switchyard::placement {
namespace {

TEST(RoutingTrace, FileRoundTripAndBadFilesRefused) {
  RoutingTrace trace;
  trace.num_experts = 4;
  trace.ep_size = 2;
  for (int l = 0; l < 2; ++l) {
    LayerRouting layer;
    layer.top_k = 2;
    layer.experts = {0, 3, 2, -1, 1, l};
    layer.gates = {0.7f, 0.3f, 1.0f, 0.0f, 0.5f, 0.5f};
    layer.source_rank = {0, 1, 1};
    trace.layers.push_back(layer);
  }
  const auto dir = std::filesystem::temp_directory_path() / ("sy_trace_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = (dir / "t.pb").string();
  TraceInfo info;
  info.step = 42;
  info.world_size = 2;
  info.ranks_per_node = 1;
  info.d_model = 16;
  info.activation_bytes = 2;
  write_routing_trace(path, trace, info);
  TraceInfo back_info;
  const auto back = read_routing_trace(path, &back_info);
  EXPECT_EQ(back.num_experts, 4);
  EXPECT_EQ(back.ep_size, 2);
  ASSERT_EQ(back.layers.size(), 2u);
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_EQ(back.layers[l].experts, trace.layers[l].experts);
    EXPECT_EQ(back.layers[l].gates, trace.layers[l].gates);
    EXPECT_EQ(back.layers[l].source_rank, trace.layers[l].source_rank);
  }
  EXPECT_EQ(back_info.step, 42);
  EXPECT_EQ(back_info.d_model, 16);
  EXPECT_EQ(back_info.activation_bytes, 2);
  std::ofstream(dir / "junk.pb") << "not a trace at all";
  try {
    read_routing_trace((dir / "junk.pb").string());
    ADD_FAILURE() << "junk accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("junk.pb"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_routing_trace((dir / "missing.pb").string()), DataError);
  core::remove_tree(dir);
}

}  // namespace
}  // namespace switchyard::placement
