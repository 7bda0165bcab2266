// A multi-rank program that fails on purpose, through the same fatal-error path as the CLI.
// Usage: fault_injection throw|hang|segv|stop|exit
//   throw: rank 1 throws at step 3 of an exchange loop; the others wait in a collective.
//   hang:  rank 1 stops calling collectives at step 3; rank 0's bounded wait (2 s) expires.
//   segv:  rank 1 raises SIGSEGV at step 3 (a bug): the crash handler reports it in one line.
//   stop:  rank 1 stops itself (SIGSTOP) at step 3: its heartbeat falls silent, rank 0's watchdog
//          ends the job (the collective's wait is 60 s here, so only the watchdog can end it in time).
//   exit:  rank 1 exits with status 3 at step 3 without finalizing MPI: mpirun ends the job.
// Every rank must exit non-zero, promptly, with one "error:" line naming the rank.
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <string>

#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel/fatal.h"
#include "parallel/mpi_runtime.h"

int main(int argc, char** argv) {
  using namespace switchyard;
  parallel::MpiRuntime mpi(&argc, &argv);
  parallel::install_crash_handler(mpi.rank());
  mpi.watch_peers(3.0);
  try {
    const char* usage = "usage: fault_injection throw|hang|segv|stop|exit";
    SY_CHECK_AS(UsageError, argc == 2, usage);
    const std::string mode = argv[1];
    SY_CHECK_AS(UsageError, mode == "throw" || mode == "hang" || mode == "segv" || mode == "stop" || mode == "exit", usage);
    auto world = parallel::make_mpi_world(mode == "hang" ? 2.0 : 60.0);
    for (int step = 0; step < 10; ++step) {
      if (world->rank() == 1 && step == 3) {
        if (mode == "hang") std::this_thread::sleep_for(std::chrono::hours(1));
        if (mode == "segv") std::raise(SIGSEGV);
        if (mode == "stop") std::raise(SIGSTOP);
        if (mode == "exit") std::_Exit(3);
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
