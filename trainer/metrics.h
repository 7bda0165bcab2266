// Metrics sinks on rank 0: metrics.jsonl (one JSON object per logged step) and TensorBoard event
// files (Protobuf Event records framed with masked CRC-32C), so `tensorboard --logdir` reads the run.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace switchyard::trainer {

/// Ordered key/value pairs of one metrics line.
using MetricsLine = std::vector<std::pair<std::string, double>>;

class MetricsWriter {
 public:
  /// Opens `run_dir`/metrics.jsonl for appending, dropping lines with step > `resume_step` (a resumed
  /// run recomputes them, so steps never repeat) and torn lines, and a new TensorBoard event file.
  /// Every write is checked: IoError names the file (the history already written stays).
  MetricsWriter(const std::string& run_dir, int64_t resume_step);
  void write(int64_t step, const MetricsLine& line);

 private:
  std::string jsonl_path_, events_path_;
  std::ofstream events_;
  void write_event(const std::string& serialized);
};

/// Formats one JSON object: {"step":s,"key":value,...}; non-finite values become null.
std::string to_json(int64_t step, const MetricsLine& line);

/// Reads TensorBoard records from `path`, checking both CRCs; returns the serialized events.
/// Throws DataError on a bad record. (Used by tests and `switchyard inspect`-style tools.)
std::vector<std::string> read_event_records(const std::string& path);

}  // namespace switchyard::trainer
