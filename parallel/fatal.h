// The one place a fatal error ends the process: one "error: ..." line, then every rank ends.
#pragma once

#include <exception>

namespace switchyard::parallel {

/// Prints "error: <what>" (with "[rank r] " when several ranks run and the message lacks it) to
/// stderr and returns the exit status for `e`. When MPI runs with more than one rank, aborts the
/// whole job with that status instead of returning, so no peer waits on a rank that is gone.
int report_fatal(const std::exception& e) noexcept;

}  // namespace switchyard::parallel
