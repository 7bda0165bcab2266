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
#include "trainer/proto/tensorboard.pb.h"

namespace switchyard::trainer {
namespace fs = std::filesystem;

std::string to_json(int64_t step, const MetricsLine& line) {
  std::ostringstream out;
  out << "{\"step\":" << step;
  char buf[64];
  for (const auto& [key, value] : line) {
    if (std::isfinite(value)) std::snprintf(buf, sizeof(buf), "%.9g", value);
    else std::snprintf(buf, sizeof(buf), "null");
    out << ",\"" << key << "\":" << buf;
  }
  out << "}";
  return out.str();
}

MetricsWriter::MetricsWriter(const std::string& run_dir, int64_t resume_step) {
  fs::create_directories(run_dir);
  const auto path = fs::path(run_dir) / "metrics.jsonl";
  if (fs::exists(path)) {
    // Keep lines up to the resumed step; write atomically so a crash here loses nothing.
    std::ifstream in(path);
    std::ostringstream kept;
    for (std::string l; std::getline(in, l);) {
      const auto pos = l.find("\"step\":");
      if (pos == std::string::npos) continue;
      if (std::stoll(l.substr(pos + 7)) <= resume_step) kept << l << "\n";
    }
    const auto tmp = fs::path(run_dir) / "metrics.jsonl.tmp";
    std::ofstream(tmp) << kept.str();
    fs::rename(tmp, path);
  }
  jsonl_.open(path, std::ios::app);
  SY_CHECK_AS(DataError, jsonl_.good(), path.string(), ": cannot open for writing");
  char host[256] = "host";
  gethostname(host, sizeof(host) - 1);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const auto events = fs::path(run_dir) / ("events.out.tfevents." +
                                           std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now).count()) +
                                           "." + host + "." + std::to_string(getpid()));
  events_.open(events, std::ios::binary);
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
}

void MetricsWriter::write(int64_t step, const MetricsLine& line) {
  jsonl_ << to_json(step, line) << "\n";
  jsonl_.flush();
  tensorboard::Event e;
  e.set_wall_time(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  e.set_step(step);
  auto* summary = e.mutable_summary();
  for (const auto& [key, value] : line) {
    auto* v = summary->add_value();
    v->set_tag(key);
    v->set_simple_value(static_cast<float>(value));
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
