// `switchyard report RUN_DIR --out DIR`: PNGs of a run from its metrics.jsonl, drawn by gnuplot
// (Debian's gnuplot-nox): loss and validation curves, each MoE layer's expert load over the steps
// (a heatmap), and the exchange's intra- and inter-node bytes.
#include <spawn.h>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"
#include "core/json_line.h"
#include "tools/command.h"

extern char** environ;

namespace switchyard::tools {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

/// The logged steps of metrics.jsonl (whole lines; a torn last line is skipped).
std::vector<json> read_metrics(const std::string& run_dir) {
  const auto path = (fs::path(run_dir) / "metrics.jsonl").string();
  SY_CHECK_AS(DataError, fs::is_regular_file(path), path, ": no metrics here (is ", run_dir, " a run directory?)");
  std::istringstream in(core::read_file(path));
  std::vector<json> lines;
  int64_t number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    auto j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step") && j["step"].is_number_integer()) lines.push_back(std::move(j));
  }
  SY_CHECK_AS(DataError, !lines.empty(), path, ": no logged step (", number, " lines)");
  return lines;
}

/// Runs gnuplot on `script`; throws naming what failed.
void run_gnuplot(const std::string& gnuplot, const std::string& script) {
  std::vector<char*> argv = {const_cast<char*>(gnuplot.c_str()), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, gnuplot.c_str(), nullptr, nullptr, argv.data(), environ);
  SY_CHECK_AS(UsageError, spawned == 0, "report: cannot run ", gnuplot, " (", std::strerror(spawned),
              "); install Debian's gnuplot-nox or pass --gnuplot PATH");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  SY_CHECK_AS(IoError, WIFEXITED(status) && WEXITSTATUS(status) == 0, "report: ", gnuplot, " failed on ", script);
}

std::string number_or_nan(const json& line, const std::string& key) {
  if (!line.contains(key) || !line[key].is_number()) return "NaN";
  std::ostringstream out;
  out.precision(9);
  out << line[key].get<double>();
  return out.str();
}

constexpr const char* kTerminal = "set terminal pngcairo noenhanced size 1000,600 font ',11'\n";

/// loss.png: loss, lm_loss and the validation loss over the steps.
std::string draw_losses(const std::vector<json>& lines, const std::string& out, const std::string& gnuplot) {
  std::ostringstream data;
  bool validated = false;
  for (const auto& l : lines) {
    data << l["step"].get<int64_t>() << ' ' << number_or_nan(l, "loss") << ' ' << number_or_nan(l, "lm_loss") << ' '
         << number_or_nan(l, "val_loss") << '\n';
    validated = validated || l.contains("val_loss");
  }
  core::write_file_atomically((fs::path(out) / "loss.dat").string(), data.str());
  const auto script = (fs::path(out) / "loss.gp").string();
  core::write_file_atomically(script, std::string(kTerminal) + "set output '" + out + "/loss.png'\n" +
                                          "set xlabel 'step'\nset ylabel 'loss (nats/token)'\nset grid\nset key top right\n"
                                          "set datafile missing 'NaN'\n"
                                          "plot '" + out + "/loss.dat' using 1:2 with lines lw 2 title 'loss (lm + routing)', "
                                          "'' using 1:3 with lines lw 1 title 'lm_loss'" +
                                          (validated ? ", '' using 1:4 with linespoints pt 7 ps 1.2 lw 2 title 'val_loss'" : "") + "\n");
  run_gnuplot(gnuplot, script);
  return "loss.png";
}

/// expert_load_moe<l>.png: each expert's share of the layer's slots divided by 1 / experts (1 = even),
/// step by step.
std::string draw_load(const std::vector<json>& lines, const std::string& key, const std::string& out, const std::string& gnuplot) {
  std::ostringstream data;
  int64_t choices = 0;
  for (const auto& l : lines) {
    if (!l.contains(key) || !l[key].is_array() || l[key].empty()) continue;
    const auto& load = l[key];
    double total = 0;
    for (const auto& v : load) total += v.is_number() ? v.get<double>() : 0.0;
    choices = static_cast<int64_t>(load.size());
    for (size_t e = 0; e < load.size(); ++e) {
      const double share = total > 0 && load[e].is_number() ? load[e].get<double>() / total * static_cast<double>(load.size()) : 0.0;
      data << l["step"].get<int64_t>() << ' ' << e << ' ' << share << '\n';
    }
    data << '\n';
  }
  const std::string name = key.substr(std::string("expert_load_").size());  // moe<l>
  core::write_file_atomically((fs::path(out) / (key + ".dat")).string(), data.str());
  const auto script = (fs::path(out) / (key + ".gp")).string();
  core::write_file_atomically(
      script, std::string(kTerminal) + "set output '" + out + "/" + key + ".png'\n" + "set title 'expert load, MoE layer " +
                  name.substr(3) + " (share x experts: 1 = even)'\nset xlabel 'step'\nset ylabel 'expert'\n" +
                  "set yrange [-0.5:" + std::to_string(choices) + "-0.5]\nset ytics 1\nset cblabel 'load / mean'\n" +
                  "set palette defined (0 'white', 1 '#4a90d9', 2 '#d94a4a')\nset view map\n" +
                  "splot '" + out + "/" + key + ".dat' using 1:2:3 with image notitle\n");
  run_gnuplot(gnuplot, script);
  return key + ".png";
}

/// bytes.png: all-to-all bytes per logged window, intra- and inter-node.
std::string draw_bytes(const std::vector<json>& lines, const std::string& out, const std::string& gnuplot) {
  std::ostringstream data;
  for (const auto& l : lines) {
    data << l["step"].get<int64_t>() << ' ' << number_or_nan(l, "a2a_bytes_intra_node") << ' '
         << number_or_nan(l, "a2a_bytes_inter_node") << '\n';
  }
  core::write_file_atomically((fs::path(out) / "bytes.dat").string(), data.str());
  const auto script = (fs::path(out) / "bytes.gp").string();
  core::write_file_atomically(script, std::string(kTerminal) + "set output '" + out + "/bytes.png'\n" +
                                          "set xlabel 'step'\nset ylabel 'all-to-all bytes per logged window'\nset grid\n"
                                          "set datafile missing 'NaN'\nset format y '%.1s%cB'\n"
                                          "plot '" + out + "/bytes.dat' using 1:2 with lines lw 2 title 'intra-node', "
                                          "'' using 1:3 with lines lw 2 title 'inter-node'\n");
  run_gnuplot(gnuplot, script);
  return "bytes.png";
}

}  // namespace

void add_report_command(CLI::App& app, Commands& commands) {
  struct Options {
    std::string run_dir, out, gnuplot = "gnuplot";
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("report", "PNGs of a run: loss curves, expert load per MoE layer, exchange bytes");
  cmd->add_option("run_dir", o->run_dir, "run directory (metrics.jsonl)")->required();
  cmd->add_option("--out", o->out, "directory for the PNGs (and their data and gnuplot scripts)")->required();
  cmd->add_option("--gnuplot", o->gnuplot, "gnuplot executable");
  commands.emplace_back(cmd, [o](RankStarter&) {
    const auto lines = read_metrics(o->run_dir);
    std::error_code ec;
    fs::create_directories(o->out, ec);
    SY_CHECK_AS(IoError, !ec, o->out, ": cannot create (", ec.message(), ")");
    const std::string out = fs::absolute(o->out).lexically_normal().string();
    SY_CHECK_AS(UsageError, out.find('\'') == std::string::npos, o->out, ": a quote in the path (gnuplot scripts quote it)");
    std::vector<std::string> pngs = {draw_losses(lines, out, o->gnuplot)};
    std::vector<std::string> load_keys;
    for (const auto& [key, value] : lines.back().items()) {
      if (key.rfind("expert_load_moe", 0) == 0 && value.is_array()) load_keys.push_back(key);
    }
    for (const auto& key : load_keys) pngs.push_back(draw_load(lines, key, out, o->gnuplot));
    pngs.push_back(draw_bytes(lines, out, o->gnuplot));
    core::JsonLine line;
    line.add("report", out).add("steps", static_cast<int64_t>(lines.size())).add("pngs", static_cast<int64_t>(pngs.size()));
    std::string names;
    for (const auto& p : pngs) names += (names.empty() ? "" : " ") + p;
    line.add("files", names);
    std::printf("%s\n", line.str().c_str());
    return 0;
  });
}

}  // namespace switchyard::tools
