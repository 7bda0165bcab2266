// The routing-trace reader and the placement-plan reader, on the same bytes.
#include "placement/plan_file.h"
#include "placement/routing_trace.h"
#include "tests/fuzz/targets/fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using switchyard::fuzz::expect_refusal_or_success;
  const auto trace = switchyard::fuzz::write_scratch("trace.pb", data, size);
  expect_refusal_or_success([&] {
    switchyard::placement::TraceInfo info;
    (void)switchyard::placement::read_routing_trace(trace, &info);
  });
  const auto plan = switchyard::fuzz::write_scratch("plan.yaml", data, size);
  expect_refusal_or_success([&] { (void)switchyard::placement::load_placement_plan(plan, 2, 4, 2); });
  return 0;
}
