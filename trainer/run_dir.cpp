// Run-directory lock and the choice of where training starts.
#include "trainer/run_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"

namespace switchyard::trainer {
namespace fs = std::filesystem;
namespace {

std::string host_name() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  return host;
}

/// "host pid start" of the lock file, or "" when unreadable.
std::string read_holder(int fd) {
  char buf[512] = {0};
  const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  std::string s(buf, n > 0 ? static_cast<size_t>(n) : 0);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

/// Whether the holder recorded in the file is a process of this host that no longer runs (or the
/// file names no holder at all).
bool holder_is_gone(const std::string& holder) {
  std::istringstream in(holder);
  std::string host;
  long pid = 0;
  if (!(in >> host >> pid) || pid <= 0) return true;
  if (host != host_name()) return false;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

std::string describe_holder(const std::string& holder) {
  std::istringstream in(holder);
  std::string host, pid, since;
  in >> host >> pid >> since;
  if (host.empty()) return "an unknown process";
  return "host " + host + ", pid " + pid + (since.empty() ? "" : ", since unix time " + since);
}

bool has_metrics(const fs::path& run_dir) {
  std::ifstream in(run_dir / "metrics.jsonl");
  std::string line;
  while (in && std::getline(in, line)) {
    if (line.find("\"step\":") != std::string::npos) return true;
  }
  return false;
}

/// Removes what a run writes into its directory (not the lock, not config.yaml, not other files).
void remove_results(const fs::path& run_dir) {
  std::error_code ec;
  for (const char* sub : {"checkpoints", "plans", "traces"}) core::remove_tree((run_dir / sub).string());
  fs::remove(run_dir / "metrics.jsonl", ec);
  for (fs::directory_iterator it(run_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().filename().string().rfind("events.out.tfevents.", 0) == 0) fs::remove(it->path(), ec);
  }
}

}  // namespace

ResumeMode ResumeMode::parse(const std::string& text, bool overwrite) {
  ResumeMode m;
  if (text == "auto") m.kind = Kind::kAuto;
  else if (text == "never") m.kind = Kind::kNever;
  else {
    m.kind = Kind::kPath;
    m.path = text;
  }
  SY_CHECK_AS(UsageError, !overwrite || m.kind == Kind::kNever,
              "--overwrite: only with --resume never (it deletes the run directory's earlier results)");
  m.overwrite = overwrite;
  return m;
}

RunDirLock::RunDirLock(const std::string& run_dir) : run_dir_(run_dir), path_((fs::path(run_dir) / ".lock").string()) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  SY_CHECK_AS(IoError, !ec, run_dir, ": cannot create the run directory (", ec.message(), ")");
  const std::string& path = path_;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  SY_CHECK_AS(IoError, fd_ >= 0, path, ": cannot open the run directory's lock (", std::strerror(errno), ")");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = read_holder(fd_);
    // No flock on this filesystem: judge by the recorded holder.
    const bool no_locks = err == ENOLCK || err == EOPNOTSUPP || err == EINVAL;
    if (!no_locks || !holder_is_gone(holder)) {
      ::close(fd_);
      fd_ = -1;
      throw UsageError(run_dir + ": in use by another training job (" + describe_holder(holder) + "; lock " + path +
                       "): wait for it to end or use another --run-dir" +
                       (no_locks ? " (this filesystem has no locks: remove the lock file if that job is gone)" : ""));
    }
  }
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
  const std::string me = host_name() + " " + std::to_string(::getpid()) + " " + std::to_string(now.count()) + "\n";
  const bool ok = ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) == static_cast<ssize_t>(me.size());
  SY_CHECK_AS(IoError, ok, path, ": cannot write the run directory's lock (", std::strerror(errno), ")");
  (void)::fsync(fd_);
}

void RunDirLock::check_still_held() const {
  struct stat held {}, now {};
  const bool same = ::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &now) == 0 && held.st_ino == now.st_ino &&
                    held.st_dev == now.st_dev;
  SY_CHECK_AS(IoError, same, run_dir_, ": the run directory vanished or was replaced while the job ran (its lock ",
              path_, " is not the one this job holds); stopping without writing into it");
}

RunDirLock::~RunDirLock() {
  if (fd_ < 0) return;
  ::flock(fd_, LOCK_UN);
  ::close(fd_);
}

StartPoint choose_start(const std::string& run_dir_text, const CheckpointManager& checkpoints, const ResumeMode& mode,
                        const std::string& config_yaml) {
  const fs::path run_dir(run_dir_text);
  StartPoint start;
  if (mode.kind == ResumeMode::Kind::kPath) {
    start.checkpoint = mode.path;
    return start;
  }
  const auto existing = checkpoints.checkpoints();
  const bool earlier = !existing.empty() || has_metrics(run_dir);
  if (mode.kind == ResumeMode::Kind::kNever) {
    if (earlier && !mode.overwrite) {
      throw CheckpointError(run_dir_text + ": holds an earlier run's " + (existing.empty() ? "metrics" : "checkpoints") +
                            "; --resume never would train over them: pass --overwrite as well to delete them and "
                            "start over, --resume auto to continue, or another --run-dir");
    }
    if (earlier) {
      remove_results(run_dir);
      start.notes.push_back("--overwrite: removed the earlier run's results in " + run_dir_text);
    }
    return start;
  }
  // kAuto.
  const auto latest = checkpoints.latest();
  if (latest.dir) {
    start.checkpoint = latest.dir;
    return start;
  }
  SY_CHECK_AS(CheckpointError, !latest.outside, latest.problem,
              ": refusing to resume from another run's checkpoint (name one with --resume PATH)");
  if (existing.empty()) {
    // The same run launched again before its first checkpoint (a crash or a requeue): nothing it
    // wrote can be resumed, so it starts over; its metrics describe steps that will be run again.
    std::error_code ec;
    if (earlier && fs::is_regular_file(run_dir / "config.yaml", ec) &&
        core::read_file((run_dir / "config.yaml").string()) == config_yaml) {
      remove_results(run_dir);
      start.notes.push_back(run_dir_text + ": the earlier launch of this config ended before its first checkpoint; "
                            "starting over");
      return start;
    }
    SY_CHECK_AS(CheckpointError, !earlier, run_dir_text, ": holds an earlier run's metrics but no checkpoint",
                latest.present ? " (" + latest.problem + ")" : std::string(),
                ": pass --resume never --overwrite to start over, or another --run-dir");
    if (latest.present) start.notes.push_back(latest.problem + "; no checkpoint here: starting from scratch");
    return start;
  }
  // A broken pointer with checkpoints beside it: the newest that verifies. The pointer moves aside
  // (kept for inspection), so that the next checkpoint can write a good one in its place.
  const std::string why = latest.present ? latest.problem : checkpoints.root() + "/latest is missing";
  std::string refused;
  for (auto it = existing.rbegin(); it != existing.rend() && !start.checkpoint; ++it) {
    try {
      verify_checkpoint(*it, read_manifest(*it));
      start.checkpoint = *it;
    } catch (const CheckpointError& e) {
      refused += (refused.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  SY_CHECK_AS(CheckpointError, start.checkpoint.has_value(), why, ", and no checkpoint here verifies: ", refused);
  start.notes.push_back(why + "; resuming from the newest checkpoint that verifies, " + *start.checkpoint +
                        (refused.empty() ? "" : " (newer ones refused: " + refused + ")"));
  if (latest.present) {
    const auto pointer = fs::path(checkpoints.root()) / "latest";
    const auto aside = fs::path(checkpoints.root()) / ("latest.broken." + std::to_string(::time(nullptr)));
    std::error_code ec;
    fs::rename(pointer, aside, ec);
    SY_CHECK_AS(IoError, !ec, pointer.string(), ": broken (", latest.problem, ") and cannot be moved aside (",
                ec.message(), ")");
    start.notes.push_back("moved the broken pointer aside to " + aside.string());
  }
  return start;
}

}  // namespace switchyard::trainer
