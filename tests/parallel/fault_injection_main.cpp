// A multi-rank program that fails on purpose, through the same fatal-error path as the CLI.
// Usage: fault_injection throw|hang|segv
//   throw: rank 1 throws at step 3 of an exchange loop; the others wait in a collective.
//   hang:  rank 1 stops calling collectives at step 3; rank 0's bounded wait (2 s) expires.
//   segv:  rank 1 raises SIGSEGV at step 3 (a bug): the crash handler reports it in one line.
// Every rank must exit non-zero, promptly, with one "error:" line naming the rank.
#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>

#include <string>

#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel/fatal.h"

int main(int argc, char** argv) {
  using namespace switchyard;
  parallel::MpiRuntime mpi(&argc, &argv);
  parallel::install_crash_handler(mpi.rank());
  try {
    SY_CHECK_AS(UsageError, argc == 2, "usage: fault_injection throw|hang|segv");
    const std::string mode = argv[1];
    SY_CHECK_AS(UsageError, mode == "throw" || mode == "hang" || mode == "segv", "usage: fault_injection throw|hang|segv");
    const bool hang = mode == "hang";
    auto world = parallel::make_mpi_world(2.0);
    for (int step = 0; step < 10; ++step) {
      if (world->rank() == 1 && step == 3) {
        if (hang) std::this_thread::sleep_for(std::chrono::hours(1));
        if (mode == "segv") std::raise(SIGSEGV);
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
