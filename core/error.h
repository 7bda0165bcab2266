// Error types and the checking macros used for bad input (SY_CHECK) and for bugs (SY_ASSERT).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace switchyard {

/// Base of every error Switchyard throws. `what()` is one line, ready for "error: <what>".
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Bad configuration: a key path, a value, a cross-field rule. Exit status 2.
class ConfigError : public Error {
 public:
  using Error::Error;
};

/// Bad command-line usage. Exit status 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

/// Unreadable or malformed data files. Exit status 2.
class DataError : public Error {
 public:
  using Error::Error;
};

/// A checkpoint that is missing, corrupt, truncated or incompatible. Exit status 2.
class CheckpointError : public Error {
 public:
  using Error::Error;
};

/// A file that cannot be written (disk full, read-only or vanished directory). Exit status 1: the
/// environment failed, not the user's input.
class IoError : public Error {
 public:
  using Error::Error;
};

/// A failed or timed-out collective, or a peer rank that failed. Exit status 1.
class CommError : public Error {
 public:
  using Error::Error;
};

/// A broken invariant: a bug in Switchyard, not the user's input. Exit status 1.
class InternalError : public Error {
 public:
  using Error::Error;
};

/// Exit status for an error: 2 for bad input (config, usage, data, checkpoint), 1 otherwise.
int exit_code_for(const std::exception& e) noexcept;

namespace detail {

template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

[[noreturn]] void throw_internal(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace detail
}  // namespace switchyard

/// Throws `switchyard::Error` with the streamed message when `cond` is false (bad input).
#define SY_CHECK(cond, ...)                                              \
  do {                                                                   \
    if (!(cond)) throw ::switchyard::Error(::switchyard::detail::concat(__VA_ARGS__)); \
  } while (0)

/// Same, with a chosen error type: SY_CHECK_AS(DataError, n > 0, "file ", path, ": empty").
#define SY_CHECK_AS(ErrorType, cond, ...)                                \
  do {                                                                   \
    if (!(cond)) throw ::switchyard::ErrorType(::switchyard::detail::concat(__VA_ARGS__)); \
  } while (0)

/// A library call's status checked (MPI, NCCL, CUDA): when `expr` does not return `ok`, throws
/// ErrorType "[rank r] <expr> failed at file:line: <describe(status)>", r the caller's world rank.
#define SY_CHECK_CALL(ErrorType, rank, ok, describe, expr)                                              \
  do {                                                                                                  \
    const auto sy_status = (expr);                                                                      \
    if (sy_status != (ok))                                                                              \
      throw ::switchyard::ErrorType(::switchyard::detail::concat("[rank ", (rank), "] ", #expr, " failed at ", \
                                                                 __FILE__, ":", __LINE__, ": ", describe(sy_status))); \
  } while (0)

/// Invariant that only a bug can break; throws InternalError with file:line.
#define SY_ASSERT(cond, ...)                                                               \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::switchyard::detail::throw_internal(#cond, __FILE__, __LINE__,                      \
                                           ::switchyard::detail::concat(__VA_ARGS__));     \
  } while (0)

/// SY_ASSERT on hot paths: compiled out when NDEBUG is defined.
#ifdef NDEBUG
#define SY_DEBUG_ASSERT(cond, ...) \
  do {                             \
  } while (0)
#else
#define SY_DEBUG_ASSERT(cond, ...) SY_ASSERT(cond, __VA_ARGS__)
#endif
