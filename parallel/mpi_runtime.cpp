// MPI start-up and shutdown, and the heartbeat ring that detects a stopped rank.
#include "parallel/mpi_runtime.h"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "core/error.h"

namespace switchyard::parallel {

/// The heartbeat ring. NOTES (protocol): on its own duplicate of MPI_COMM_WORLD, rank r sends 1-byte
/// messages to r + 1 and receives from r - 1 (mod size): kBeat every kBeatPeriod, then one kBye when
/// its process ends normally. A receive is always posted until the predecessor's kBye, so every send
/// is matched and the ring shuts down cleanly; a rank leaves only after its predecessor's kBye, so
/// every rank stays watched until all are done. Silence is judged only while this thread itself ran
/// on time: if it was not scheduled for a second (the whole job suspended, e.g. `scontrol suspend`),
/// the clock restarts instead of blaming the peer.
class PeerWatchdog {
 public:
  PeerWatchdog(double silence_s) : silence_s_(silence_s) {
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    thread_ = std::thread([this] { run(); });
  }
  ~PeerWatchdog() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    MPI_Comm_free(&comm_);
  }
  PeerWatchdog(const PeerWatchdog&) = delete;
  PeerWatchdog& operator=(const PeerWatchdog&) = delete;

 private:
  static constexpr char kBeat = 1, kBye = 2;
  static constexpr int kTag = 7001;
  static constexpr std::chrono::milliseconds kBeatPeriod{250}, kPoll{20};

  void run() {
    using clock = std::chrono::steady_clock;
    const int next = (rank_ + 1) % size_, prev = (rank_ + size_ - 1) % size_;
    MPI_Request recv = MPI_REQUEST_NULL, send = MPI_REQUEST_NULL;
    MPI_Irecv(&in_, 1, MPI_CHAR, prev, kTag, comm_, &recv);
    auto last_heard = clock::now(), last_tick = last_heard, last_sent = last_heard - kBeatPeriod;
    bool prev_done = false, bye_sent = false;
    for (;;) {
      const auto now = clock::now();
      if (now - last_tick > std::chrono::seconds(1)) last_heard = now;  // this process was not running
      last_tick = now;
      int done = 0;
      while (!prev_done && MPI_Test(&recv, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done) {
        last_heard = now;
        if (in_ == kBye) prev_done = true;
        else MPI_Irecv(&in_, 1, MPI_CHAR, prev, kTag, comm_, &recv);
      }
      int sent = 1;
      if (send != MPI_REQUEST_NULL) MPI_Test(&send, &sent, MPI_STATUS_IGNORE);
      if (sent && !bye_sent && (stop_ || now - last_sent >= kBeatPeriod)) {
        out_ = stop_ ? kBye : kBeat;
        bye_sent = stop_;
        MPI_Isend(&out_, 1, MPI_CHAR, next, kTag, comm_, &send);
        last_sent = now;
      }
      if (bye_sent && prev_done) {
        MPI_Wait(&send, MPI_STATUS_IGNORE);
        return;
      }
      const double silent = std::chrono::duration<double>(now - last_heard).count();
      if (!prev_done && silent > silence_s_) {
        std::fprintf(stderr,
                     "error: [rank %d] rank %d sent no heartbeat for %.1f s: it stopped or its host is gone "
                     "(parallel.peer_silence_s = %g); ending the job\n",
                     rank_, prev, silent, silence_s_);
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      std::this_thread::sleep_for(kPoll);
    }
  }

  double silence_s_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  char in_ = 0, out_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  SY_CHECK_AS(CommError, provided >= MPI_THREAD_SERIALIZED, "[rank ", rank_,
              "] MPI provides thread level ", provided, "; Switchyard needs at least MPI_THREAD_SERIALIZED");
}

void MpiRuntime::watch_peers(double silence_s) {
  int provided = 0;
  MPI_Query_thread(&provided);
  // The watchdog calls MPI from its own thread: only with MPI_THREAD_MULTIPLE.
  if (silence_s > 0 && size_ > 1 && provided == MPI_THREAD_MULTIPLE && !watchdog_) {
    watchdog_ = std::make_unique<PeerWatchdog>(silence_s);
  }
}

MpiRuntime::~MpiRuntime() {
  watchdog_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void MpiRuntime::abort_job(int exit_code) {
  if (initialized()) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

bool MpiRuntime::initialized() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

}  // namespace switchyard::parallel
