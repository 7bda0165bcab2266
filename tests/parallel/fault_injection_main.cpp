// A multi-rank program that fails on purpose, through the same fatal-error path as the CLI.
// Usage: fault_injection throw|hang
//   throw: rank 1 throws at step 3 of an exchange loop; the others wait in a collective.
//   hang:  rank 1 stops calling collectives at step 3; rank 0's bounded wait (2 s) expires.
// Every rank must exit non-zero, promptly, with one "error:" line naming the rank.
#include <chrono>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel/fatal.h"

int main(int argc, char** argv) {
  using namespace switchyard;
  parallel::MpiRuntime mpi(&argc, &argv);
  try {
    SY_CHECK_AS(UsageError, argc == 2 && (std::strcmp(argv[1], "throw") == 0 || std::strcmp(argv[1], "hang") == 0),
                "usage: fault_injection throw|hang");
    const bool hang = std::strcmp(argv[1], "hang") == 0;
    auto world = parallel::make_mpi_world(2.0);
    for (int step = 0; step < 10; ++step) {
      if (world->rank() == 1 && step == 3) {
        if (hang) std::this_thread::sleep_for(std::chrono::hours(1));
        throw DataError("injected failure at step 3");
      }
      auto t = torch::ones({1024});
      world->all_reduce(t);
    }
    return 0;
  } catch (const std::exception& e) {
    return parallel::report_fatal(e);
  }
}
