// The one place a fatal error ends the process: one "error: ..." line, then every rank ends.
#pragma once

#include <exception>

namespace switchyard::parallel {

/// Prints "error: <what>" (with "[rank r] " when several ranks run and the message lacks it) to
/// stderr and returns the exit status for `e`. When MPI runs with more than one rank, aborts the
/// whole job with that status instead of returning, so no peer waits on a rank that is gone.
int report_fatal(const std::exception& e) noexcept;

/// On SIGSEGV, SIGBUS, SIGFPE or SIGILL (a bug, never bad input): one line "error: [rank r] internal
/// error: signal N (a bug in Switchyard)", a symbolized stack trace when SWITCHYARD_BACKTRACE=1, then
/// exit status 1 (mpirun then ends the other ranks). Call after MPI start-up, which installs its own.
void install_crash_handler(int rank) noexcept;

}  // namespace switchyard::parallel
