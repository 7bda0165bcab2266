// Fatal-error reporting shared by the CLI and test programs.
#include "parallel/fatal.h"

#include <mpi.h>

#include <cstdio>
#include <string>

#include "core/error.h"
#include "parallel/communicator.h"

namespace switchyard::parallel {

int report_fatal(const std::exception& e) noexcept {
  const int code = exit_code_for(e);
  int rank = 0, size = 1;
  const bool mpi = MpiRuntime::initialized();
  if (mpi) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  const std::string what = e.what();
  if (size > 1 && what.rfind("[rank ", 0) != 0) {
    std::fprintf(stderr, "error: [rank %d] %s\n", rank, what.c_str());
  } else {
    std::fprintf(stderr, "error: %s\n", what.c_str());
  }
  std::fflush(stderr);
  if (mpi && size > 1) MpiRuntime::abort_job(code);
  return code;
}

}  // namespace switchyard::parallel
