// The process's MPI start-up and shutdown, and the liveness watchdog that ends the job when a rank
// stops (a frozen or vanished process sends no heartbeat).
#pragma once

#include <memory>

namespace switchyard::parallel {

class PeerWatchdog;

/// Starts MPI (thread level multiple: the watchdog thread and autograd's device threads may call MPI)
/// with MPI_ERRORS_RETURN. One per process, owned by main() so that it outlives the top-level catch:
/// a failing rank then still reaches MPI_Abort, and every rank ends at once.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  /// Normal end: stops the watchdog once its ring neighbour has ended too, then MPI_Finalize.
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }

  /// Starts the liveness watchdog (with more than one rank): ranks form a ring, each sends its
  /// successor a heartbeat every quarter second from a thread of its own, and a rank that hears
  /// nothing from its predecessor for `silence_s` seconds (a process stopped, frozen or gone without
  /// MPI noticing) ends the whole job with one error line. A heartbeat thread keeps beating while its
  /// rank computes or waits, so only a process that stopped entirely falls silent. 0 = off.
  void watch_peers(double silence_s);

  /// Ends every rank of the job (after a fatal error on this one). Never returns.
  [[noreturn]] static void abort_job(int exit_code);
  static bool initialized();

 private:
  int rank_ = 0;
  int size_ = 1;
  std::unique_ptr<PeerWatchdog> watchdog_;
};

}  // namespace switchyard::parallel
