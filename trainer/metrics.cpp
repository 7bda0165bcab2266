// metrics.jsonl and TensorBoard event files.
#include "trainer/metrics.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "core/crc32c.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/json_line.h"
#include "trainer/proto/tensorboard.pb.h"

namespace switchyard::trainer {
namespace fs = std::filesystem;

std::string to_json(int64_t step, const MetricsLine& line, const MetricsArrays& arrays) {
  core::JsonLine json;
  json.add("step", step);
  for (const auto& [key, value] : line) json.add(key, value);
  for (const auto& [key, values] : arrays) json.add(key, values);
  return json.str();
}

MetricsLine metrics_line(const StepFigures& f) {
  MetricsLine line = {{"loss", f.lm_loss + f.aux_loss},
                      {"lm_loss", f.lm_loss},
                      {"aux_loss", f.aux_loss},
                      {"lr", f.lr},
                      {"grad_norm", f.grad_norm},
                      {"tokens_per_s", f.tokens_per_s},
                      {"tokens_seen", f.tokens_seen},
                      {"dropped_frac", f.dropped_frac},
                      {"expert_load_max_over_mean", f.load_max_over_mean},
                      {"a2a_bytes_intra_node", f.a2a_bytes_intra_node},
                      {"a2a_bytes_inter_node", f.a2a_bytes_inter_node},
                      {"skipped_steps", f.skipped_steps},
                      {"exchange_s", f.exchange_s},
                      {"exchange_share", f.exchange_share},
                      {"model_tflops", f.model_tflops}};
  if (f.mfu) line.emplace_back("mfu", *f.mfu);
  if (f.peak_mem_gib) line.emplace_back("peak_mem_gib", *f.peak_mem_gib);
  for (const auto& [name, v] : f.losses) line.emplace_back("loss_" + name, v);
  if (f.val_loss) line.emplace_back("val_loss", *f.val_loss);
  if (f.replan) {  // the first line after a re-plan: its predicted effect beside the measured bytes
    line.emplace_back("replan_predicted_inter_node_bytes_before", f.replan->first);
    line.emplace_back("replan_predicted_inter_node_bytes_after", f.replan->second);
  }
  for (size_t l = 0; l < f.layers.size(); ++l) {
    const auto& layer = f.layers[l];
    const std::string suffix = "_moe" + std::to_string(l);
    line.emplace_back("dropped" + suffix, layer.dropped);
    line.emplace_back("experts_per_token" + suffix, layer.experts_per_token);
    if (layer.null_per_token) line.emplace_back("null_per_token" + suffix, *layer.null_per_token);
    if (layer.entropy) line.emplace_back("router_entropy" + suffix, *layer.entropy);
    if (layer.capacity) line.emplace_back("capacity" + suffix, *layer.capacity);
    if (layer.capacity_min) line.emplace_back("capacity_min" + suffix, *layer.capacity_min);
  }
  return line;
}

MetricsArrays metrics_arrays(const StepFigures& f) {
  MetricsArrays arrays;
  for (size_t l = 0; l < f.layers.size(); ++l) arrays.emplace_back("expert_load_moe" + std::to_string(l), f.layers[l].load);
  return arrays;
}

namespace {

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%lldh%02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
  else std::snprintf(buf, sizeof(buf), "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

}  // namespace

std::string progress_line(const StepFigures& f) {
  char text[320];
  std::snprintf(text, sizeof(text), "step %lld/%lld  loss %.4f  lr %.2e  tok/s %.0f  load max/mean %.2f%s  ETA %s",
                (long long)f.step, (long long)f.total_steps, f.lm_loss + f.aux_loss, f.lr, f.tokens_per_s,
                f.load_max_over_mean, f.val_loss ? ("  val " + std::to_string(*f.val_loss)).c_str() : "",
                format_duration(f.eta_s).c_str());
  return text;
}

namespace {

/// The step of a metrics line, or -1 when it is not a whole line this writer wrote (e.g. the torn
/// last line of a run that died mid-write).
int64_t step_of_line(const std::string& line) {
  if (line.rfind("{\"step\":", 0) != 0 || line.back() != '}') return -1;
  char* end = nullptr;
  const long long step = std::strtoll(line.c_str() + 8, &end, 10);
  return end != line.c_str() + 8 && (*end == ',' || *end == '}') ? step : -1;
}

}  // namespace

MetricsWriter::MetricsWriter(const std::string& run_dir, int64_t resume_step) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  SY_CHECK_AS(IoError, !ec, run_dir, ": cannot create the run directory (", ec.message(), ")");
  jsonl_path_ = (fs::path(run_dir) / "metrics.jsonl").string();
  if (fs::exists(jsonl_path_)) {
    // Keep whole lines up to the resumed step (a resumed run recomputes the later ones), replacing the
    // file only once the kept lines are safely written: a failure leaves it as it was.
    std::istringstream in(core::read_file(jsonl_path_));
    std::string kept;
    for (std::string l; std::getline(in, l);) {
      const int64_t step = step_of_line(l);
      if (step >= 0 && step <= resume_step) kept += l + "\n";
    }
    core::write_file_atomically(jsonl_path_, kept);
  }
  char host[256] = "host";
  gethostname(host, sizeof(host) - 1);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  events_path_ = (fs::path(run_dir) / ("events.out.tfevents." +
                                       std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now).count()) +
                                       "." + host + "." + std::to_string(getpid())))
                     .string();
  events_.open(events_path_, std::ios::binary);
  SY_CHECK_AS(IoError, events_.good(), events_path_, ": cannot create the TensorBoard event file");
  tensorboard::Event e;
  e.set_wall_time(std::chrono::duration<double>(now).count());
  e.set_file_version("brain.Event:2");
  write_event(e.SerializeAsString());
}

void MetricsWriter::write_event(const std::string& data) {
  const uint64_t len = data.size();
  const uint32_t len_crc = core::masked_crc32c(&len, sizeof(len));
  const uint32_t data_crc = core::masked_crc32c(data.data(), data.size());
  events_.write(reinterpret_cast<const char*>(&len), sizeof(len));
  events_.write(reinterpret_cast<const char*>(&len_crc), sizeof(len_crc));
  events_.write(data.data(), static_cast<std::streamsize>(data.size()));
  events_.write(reinterpret_cast<const char*>(&data_crc), sizeof(data_crc));
  events_.flush();
  SY_CHECK_AS(IoError, events_.good(), events_path_, ": write failed (disk full?)");
}

void MetricsWriter::write(int64_t step, const MetricsLine& line, const MetricsArrays& arrays) {
  core::append_to_file(jsonl_path_, to_json(step, line, arrays) + "\n");
  tensorboard::Event e;
  e.set_wall_time(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  e.set_step(step);
  auto* summary = e.mutable_summary();
  for (const auto& [key, value] : line) {
    auto* v = summary->add_value();
    v->set_tag(key);
    v->set_simple_value(static_cast<float>(value));
  }
  // An array as a histogram over its index: bucket i (limits i - 0.5, i + 0.5] holds array[i], so
  // TensorBoard draws each layer's load over expert ids, step after step.
  for (const auto& [key, values] : arrays) {
    auto* v = summary->add_value();
    v->set_tag(key);
    auto* h = v->mutable_histo();
    double num = 0, sum = 0, squares = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      const double x = static_cast<double>(i);
      h->add_bucket_limit(x + 0.5);
      h->add_bucket(values[i]);
      num += values[i];
      sum += x * values[i];
      squares += x * x * values[i];
    }
    h->set_min(0);
    h->set_max(values.empty() ? 0 : static_cast<double>(values.size() - 1));
    h->set_num(num);
    h->set_sum(sum);
    h->set_sum_squares(squares);
  }
  write_event(e.SerializeAsString());
}

std::vector<std::string> read_event_records(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(DataError, in.good(), path, ": cannot open");
  std::vector<std::string> records;
  for (;;) {
    uint64_t len = 0;
    uint32_t len_crc = 0, data_crc = 0;
    if (!in.read(reinterpret_cast<char*>(&len), sizeof(len))) break;
    SY_CHECK_AS(DataError, in.read(reinterpret_cast<char*>(&len_crc), 4) && len_crc == core::masked_crc32c(&len, 8),
                path, ": bad length CRC in record ", records.size());
    std::string data(len, '\0');
    SY_CHECK_AS(DataError, in.read(data.data(), static_cast<std::streamsize>(len)) &&
                               in.read(reinterpret_cast<char*>(&data_crc), 4) &&
                               data_crc == core::masked_crc32c(data.data(), data.size()),
                path, ": bad data CRC in record ", records.size());
    records.push_back(std::move(data));
  }
  return records;
}

}  // namespace switchyard::trainer
