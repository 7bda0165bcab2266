// The run directory as one job's property: an exclusive lock, and the choice of where `train`
// starts (resume, refuse, or start over) so that nothing a run wrote is ever lost silently.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "trainer/checkpoint.h"

namespace switchyard::trainer {

/// How `train` starts: resume from the newest checkpoint if any (auto), never, or from a path.
struct ResumeMode {
  enum class Kind { kAuto, kNever, kPath } kind = Kind::kAuto;
  std::string path;
  /// With kNever: delete what an earlier run left (checkpoints, metrics, traces, plans) and start
  /// over. Without it, a run directory holding an earlier run's results is never trained over.
  bool overwrite = false;
  static ResumeMode parse(const std::string& text, bool overwrite = false);
};

/// Exclusive use of a run directory: an flock(2) on RUN/.lock, held for the life of this object,
/// with the holder's host, pid and start time written in the file. A second job on the same
/// directory is refused naming the holder; a lock whose process died (the kernel drops its flock)
/// is taken over. Where the filesystem has no flock, the file's host and pid decide: a pid of this
/// host that no longer runs is stale.
class RunDirLock {
 public:
  /// Throws UsageError naming the directory and the holder when another live job holds it.
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  /// Throws IoError when the lock file is no longer the one this job holds: the run directory was
  /// deleted, moved or replaced under the job, and writing on would scatter the run.
  void check_still_held() const;

 private:
  std::string run_dir_, path_;
  int fd_ = -1;
};

/// Where training starts.
struct StartPoint {
  std::optional<std::string> checkpoint;  ///< resume from here; none: from scratch
  std::vector<std::string> notes;         ///< what was decided and why (logged)
};

/// Decides where `train` starts in `run_dir` (single process: rank 0 decides, then broadcasts):
///   kPath: that checkpoint.
///   kAuto: the checkpoint `latest` names. When `latest` is broken (missing, empty, a directory, a
///          loop, a name that is no checkpoint here), the newest checkpoint that verifies (manifest,
///          fields and every tensor's checksum), noting why. Refuses (CheckpointError) when `latest`
///          names a path outside the run, or when checkpoints exist and none verifies. From scratch
///          when the directory holds no earlier results, or only those of an earlier launch of the
///          same config (`config_yaml` equal to its config.yaml) that ended before its first
///          checkpoint (they are removed); otherwise, metrics without a checkpoint are refused.
///   kNever: from scratch; refuses when earlier results exist unless `overwrite`, which deletes them.
/// "Earlier results": any checkpoint, or metrics.jsonl with a line.
StartPoint choose_start(const std::string& run_dir, const CheckpointManager& checkpoints, const ResumeMode& mode,
                        const std::string& config_yaml);

}  // namespace switchyard::trainer
