// Fatal-error reporting shared by the CLI and test programs.
#include "parallel/fatal.h"

#include <execinfo.h>
#include <mpi.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "parallel/mpi_runtime.h"

namespace switchyard::parallel {

int report_fatal(const std::exception& e) noexcept {
  const int code = exit_code_for(e);
  int rank = 0, size = 1;
  const bool mpi = MpiRuntime::initialized();
  if (mpi) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  // One line: LibTorch's errors (c10::Error) carry a C++ backtrace after the message.
  std::string what = e.what();
  what = what.substr(0, what.find('\n'));
  if (size > 1 && what.rfind("[rank ", 0) != 0) {
    std::fprintf(stderr, "error: [rank %d] %s\n", rank, what.c_str());
  } else {
    std::fprintf(stderr, "error: %s\n", what.c_str());
  }
  std::fflush(stderr);
  if (mpi && size > 1) MpiRuntime::abort_job(code);
  return code;
}

namespace {

int g_crash_rank = 0;
bool g_crash_backtrace = false;

void on_crash(int sig) {
  // Async-signal-safe only: snprintf into a stack buffer is not strictly safe, so format by hand.
  char line[160];
  int n = 0;
  auto put = [&](const char* s) {
    while (*s && n < static_cast<int>(sizeof(line)) - 1) line[n++] = *s++;
  };
  auto put_int = [&](int v) {
    char digits[12];
    int k = 0;
    do {
      digits[k++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v > 0 && k < 11);
    while (k > 0 && n < static_cast<int>(sizeof(line)) - 1) line[n++] = digits[--k];
  };
  put("error: [rank ");
  put_int(g_crash_rank);
  put("] internal error: signal ");
  put_int(sig);
  put(" (a bug in Switchyard; SWITCHYARD_BACKTRACE=1 prints a stack trace)\n");
  (void)!write(STDERR_FILENO, line, n);
  if (g_crash_backtrace) {
    void* frames[64];
    const int depth = backtrace(frames, 64);
    backtrace_symbols_fd(frames, depth, STDERR_FILENO);
  }
  _exit(1);
}

}  // namespace

void install_crash_handler(int rank) noexcept {
  g_crash_rank = rank;
  const char* bt = std::getenv("SWITCHYARD_BACKTRACE");
  g_crash_backtrace = bt != nullptr && bt[0] == '1';
  struct sigaction action {};
  action.sa_handler = on_crash;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) sigaction(sig, &action, nullptr);
}

}  // namespace switchyard::parallel
