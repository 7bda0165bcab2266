// Metrics sinks on rank 0: metrics.jsonl (one JSON object per logged step) and TensorBoard event
// files (Protobuf Event records framed with masked CRC-32C), so `tensorboard --logdir` reads the run.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace switchyard::trainer {

/// Ordered key/value pairs of one metrics line.
using MetricsLine = std::vector<std::pair<std::string, double>>;
/// Named arrays of one metrics line (per-layer expert loads): JSON arrays in metrics.jsonl,
/// histograms over the array's index in TensorBoard.
using MetricsArrays = std::vector<std::pair<std::string, std::vector<double>>>;

class MetricsWriter {
 public:
  /// Opens `run_dir`/metrics.jsonl for appending, dropping lines with step > `resume_step` (a resumed
  /// run recomputes them, so steps never repeat) and torn lines, and a new TensorBoard event file.
  /// Every write is checked: IoError names the file (the history already written stays).
  MetricsWriter(const std::string& run_dir, int64_t resume_step);
  void write(int64_t step, const MetricsLine& line, const MetricsArrays& arrays = {});

 private:
  std::string jsonl_path_, events_path_;
  std::ofstream events_;
  void write_event(const std::string& serialized);
};

/// What a logged step measured (rank 0; every figure already reduced over the ranks), the source
/// of its metrics.jsonl line and its console line.
struct StepFigures {
  int64_t step = 0, total_steps = 0;
  double lm_loss = 0, aux_loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_s = 0, tokens_seen = 0, skipped_steps = 0;
  double dropped_frac = 0, load_max_over_mean = 0;
  double a2a_bytes_intra_node = 0, a2a_bytes_inter_node = 0, exchange_s = 0, exchange_share = 0;
  double model_tflops = 0;                          ///< per GPU (modules::model_flops_per_token)
  std::optional<double> mfu, peak_mem_gib;          ///< where the card's peak / the allocator is known
  std::map<std::string, double> losses;             ///< each routing loss (loss_<name>)
  std::optional<double> val_loss;
  std::optional<std::pair<double, double>> replan;  ///< predicted inter-node bytes before / after a re-plan
  double eta_s = 0;
  /// Routing of each MoE layer in the logged step (all ranks, every micro-batch).
  struct Layer {
    std::vector<double> load;            ///< slots routed to each choice (experts, then null experts), after drops
    double dropped = 0;                  ///< slots dropped (capacity)
    double experts_per_token = 0;        ///< slots that reached a routed expert, per token
    std::optional<double> null_per_token;  ///< slots taken by null experts, per token (where there are any)
    std::optional<double> entropy;       ///< mean router entropy (nats)
    std::optional<double> capacity;      ///< per-expert capacity per micro-batch (where it is limited)
    std::optional<double> capacity_min;  ///< LocMoE's Theorem-1 lower bound (grap)
  };
  std::vector<Layer> layers;
};
/// The metrics.jsonl line (keys in a fixed order: docs/training.md, "Metrics").
MetricsLine metrics_line(const StepFigures& f);
/// Its arrays: expert_load_moe<l> for each MoE layer.
MetricsArrays metrics_arrays(const StepFigures& f);
/// The console line: step, loss, lr, tokens/s, load, validation loss, ETA.
std::string progress_line(const StepFigures& f);

/// Formats one JSON object: {"step":s,"key":value,...,"array":[...]}; non-finite values become null.
std::string to_json(int64_t step, const MetricsLine& line, const MetricsArrays& arrays = {});

/// Reads TensorBoard records from `path`, checking both CRCs; returns the serialized events.
/// Throws DataError on a bad record. (Used by tests and `switchyard inspect`-style tools.)
std::vector<std::string> read_event_records(const std::string& path);

}  // namespace switchyard::trainer
