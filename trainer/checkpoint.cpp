// Checkpoint writing (atomic) and loading (re-sharding experts by global id).
#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/build_info.h"
#include "core/crc32c.h"
#include "core/error.h"
#include "core/logging.h"
#include "parallel/expert_parallel.h"

namespace switchyard::trainer {
namespace fs = std::filesystem;
namespace {

constexpr int kFormatVersion = 1;

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    case torch::kBFloat16: return "bfloat16";
    case torch::kInt64: return "int64";
    case torch::kUInt8: return "uint8";
    default: return std::string(c10::toString(t));
  }
}

torch::ScalarType dtype_from(const std::string& name, const std::string& where) {
  if (name == "float32") return torch::kFloat32;
  if (name == "float64") return torch::kFloat64;
  if (name == "bfloat16") return torch::kBFloat16;
  if (name == "int64") return torch::kInt64;
  if (name == "uint8") return torch::kUInt8;
  throw CheckpointError(where + ": unknown dtype '" + name + "'");
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }

/// Removes a directory tree (no error when absent). POSIX nftw rather than std::filesystem::remove_all,
/// which jumps to address 0 on non-empty directories in the GPU machine's build (LibTorch 2.11 wheel +
/// GCC 13; seen in two places: a run resumed after a kill, which meets the killed save's leftovers,
/// and a unit test cleaning its folder). With nftw the kill-and-resume runs pass there.
void remove_tree(const std::string& path) {
  if (!fs::exists(fs::symlink_status(path))) return;
  SY_CHECK_AS(CheckpointError, ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, path,
              ": cannot remove (", std::strerror(errno), ")");
}

void write_durable(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  SY_CHECK_AS(CheckpointError, f != nullptr, path, ": cannot create checkpoint file");
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() && std::fflush(f) == 0 &&
                  ::fsync(fileno(f)) == 0;
  std::fclose(f);
  SY_CHECK_AS(CheckpointError, ok, path, ": write failed (disk full?)");
}

/// Fault injection for tests: SWITCHYARD_FAULT_INJECT=kill_in_checkpoint:<step> kills this process
/// with SIGKILL after the tensor files of that step's checkpoint are written, before it completes.
void maybe_inject_fault(int64_t step) {
  const char* spec = std::getenv("SWITCHYARD_FAULT_INJECT");
  if (spec == nullptr) return;
  const std::string s = spec, prefix = "kill_in_checkpoint:";
  if (s.rfind(prefix, 0) == 0 && std::stoll(s.substr(prefix.size())) == step) std::raise(SIGKILL);
}

/// Accumulates tensors into one file and their manifest entries.
class TensorFileWriter {
 public:
  explicit TensorFileWriter(std::string file) : file_(std::move(file)) {}
  void add(const std::string& name, const torch::Tensor& t) {
    const auto c = t.detach().to(torch::kCPU).contiguous();
    const auto* p = static_cast<const char*>(c.data_ptr());
    const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
    proto::TensorEntry e;
    e.set_name(name);
    for (auto d : c.sizes()) e.add_shape(d);
    e.set_dtype(dtype_name(c.scalar_type()));
    e.set_file(file_);
    e.set_offset(static_cast<int64_t>(bytes_.size()));
    e.set_nbytes(static_cast<int64_t>(n));
    e.set_crc32c(core::crc32c(p, n));
    bytes_.append(p, n);
    entries_.push_back(std::move(e));
  }
  const std::string& bytes() const { return bytes_; }
  const std::vector<proto::TensorEntry>& entries() const { return entries_; }
  bool empty() const { return entries_.empty(); }

 private:
  std::string file_, bytes_;
  std::vector<proto::TensorEntry> entries_;
};

std::string expert_name(const std::string& param, int64_t global_id) {
  return param + "/expert_" + std::to_string(global_id);
}

/// Which MoE layer (0-based among MoE layers) a parameter or buffer name belongs to.
int64_t moe_layer_of(const std::string& name, const std::vector<std::string>& moe_prefixes) {
  for (size_t i = 0; i < moe_prefixes.size(); ++i)
    if (name.rfind(moe_prefixes[i], 0) == 0) return static_cast<int64_t>(i);
  return -1;
}

std::vector<std::string> moe_prefixes(modules::TransformerLMImpl& model) {
  std::vector<std::string> prefixes;
  const auto layers = model.moe_layers();
  for (size_t l = 0; l < layers.size(); ++l)
    if (!layers[l].is_empty()) prefixes.push_back("blocks." + std::to_string(l) + ".moe.");
  return prefixes;
}

/// Gathers every rank's serialized entries on all ranks (variable lengths, padded).
std::vector<std::string> all_gather_bytes(parallel::Communicator& comm, const std::string& mine) {
  auto len = torch::tensor({static_cast<int64_t>(mine.size())}, torch::kInt64);
  const auto lens = comm.all_gather(len);
  const int64_t max_len = lens.max().item<int64_t>();
  auto buf = torch::zeros({std::max<int64_t>(max_len, 1)}, torch::kUInt8);
  std::memcpy(buf.data_ptr(), mine.data(), mine.size());
  const auto all = comm.all_gather(buf).view({comm.size(), -1});
  std::vector<std::string> out;
  for (int r = 0; r < comm.size(); ++r) {
    out.emplace_back(static_cast<const char*>(all[r].data_ptr()), lens[r].item<int64_t>());
  }
  return out;
}

torch::Tensor read_tensor(const std::string& dir, const proto::TensorEntry& e) {
  const std::string path = (fs::path(dir) / e.file()).string();
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(CheckpointError, in.good(), path, ": missing checkpoint file (tensor ", e.name(), ")");
  in.seekg(e.offset());
  std::vector<int64_t> shape(e.shape().begin(), e.shape().end());
  auto t = torch::empty(shape, dtype_from(e.dtype(), path));
  SY_CHECK_AS(CheckpointError, static_cast<int64_t>(t.numel() * t.element_size()) == e.nbytes(), path,
              ": tensor ", e.name(), " declares ", e.nbytes(), " bytes for its shape and dtype");
  in.read(static_cast<char*>(t.data_ptr()), e.nbytes());
  SY_CHECK_AS(CheckpointError, in.gcount() == e.nbytes(), path, ": truncated: tensor ", e.name(), " wants ",
              e.nbytes(), " bytes at offset ", e.offset(), ", the file has ", in.gcount());
  const uint32_t crc = core::crc32c(t.data_ptr(), static_cast<size_t>(e.nbytes()));
  if (crc != e.crc32c()) {
    char msg[64];
    std::snprintf(msg, sizeof(msg), "expected crc32c %08x, got %08x", e.crc32c(), crc);
    throw CheckpointError(path + ": checksum mismatch in tensor " + e.name() + ": " + msg);
  }
  return t;
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  return name;
}

CheckpointManager::CheckpointManager(std::string root, int64_t keep, std::shared_ptr<parallel::ProcessGroups> groups)
    : root_(std::move(root)), keep_(keep), groups_(std::move(groups)) {}

std::optional<std::string> CheckpointManager::latest() const {
  std::ifstream in(fs::path(root_) / "latest");
  if (!in) return std::nullopt;
  std::string name;
  std::getline(in, name);
  if (name.empty()) return std::nullopt;
  return (fs::path(root_) / name).string();
}

void CheckpointManager::save(const TrainingState& state, const std::string& config_yaml,
                             modules::TransformerLMImpl& model, AdamW& optimizer,
                             const std::vector<parallel::ExpertPlacement>& placements) {
  auto& world = *groups_->world;
  const bool dense_writer = world.rank() == 0;
  const bool expert_writer = groups_->expert_dp->rank() == 0;  // the first expert-parallel group
  const std::string final_dir = (fs::path(root_) / checkpoint_dir_name(state.step)).string();
  const std::string tmp_dir = (fs::path(root_) / (".tmp_" + checkpoint_dir_name(state.step))).string();
  if (dense_writer) {
    fs::create_directories(root_);
    remove_tree(tmp_dir);  // leftovers of a crashed save
    fs::create_directories(tmp_dir);
  }
  world.barrier();

  const auto prefixes = moe_prefixes(model);
  TensorFileWriter writer("rank_" + std::to_string(world.rank()) + ".bin");
  for (const auto& item : model.named_parameters()) {
    const auto& name = item.key();
    const auto& p = item.value();
    auto& s = optimizer.state(name);
    if (parallel::is_expert_parameter(name)) {
      if (!expert_writer) continue;
      const int64_t layer = moe_layer_of(name, prefixes);
      const auto ids = placements.at(layer).experts_of(groups_->ep_rank);
      for (size_t i = 0; i < ids.size(); ++i) {
        writer.add(expert_name(name, ids[i]), p[i]);
        writer.add(expert_name("optim.exp_avg/" + name, ids[i]), s.exp_avg[i]);
        writer.add(expert_name("optim.exp_avg_sq/" + name, ids[i]), s.exp_avg_sq[i]);
      }
    } else if (dense_writer) {
      writer.add(name, p);
      writer.add("optim.exp_avg/" + name, s.exp_avg);
      writer.add("optim.exp_avg_sq/" + name, s.exp_avg_sq);
    }
  }
  if (dense_writer) {
    for (const auto& item : model.named_buffers()) writer.add("buffer/" + item.key(), item.value());
  }
  if (!writer.empty()) write_durable((fs::path(tmp_dir) / ("rank_" + std::to_string(world.rank()) + ".bin")).string(),
                                     writer.bytes());

  proto::CheckpointManifest mine;
  for (const auto& e : writer.entries()) *mine.add_tensors() = e;
  const auto gathered = all_gather_bytes(world, mine.SerializeAsString());
  maybe_inject_fault(state.step);

  if (dense_writer) {
    proto::CheckpointManifest m;
    m.set_format_version(kFormatVersion);
    m.set_config_yaml(config_yaml);
    m.set_step(state.step);
    m.set_tokens_seen(state.tokens_seen);
    m.set_skipped_steps(state.skipped_steps);
    m.set_cpu_rng_state(std::string(static_cast<const char*>(state.cpu_rng_state.data_ptr()),
                                    state.cpu_rng_state.numel()));
    m.set_data_seed(state.data_seed);
    m.set_data_windows(state.data_windows);
    m.set_world_size(world.size());
    m.set_expert_parallel(groups_->ep_size);
    m.set_created_by(std::string("switchyard ") + SWITCHYARD_VERSION);
    for (const auto& p : placements) {
      auto* lp = m.add_placement();
      for (auto o : p.owners()) lp->add_owner(o);
    }
    for (const auto& bytes : gathered) {
      proto::CheckpointManifest part;
      SY_CHECK_AS(CheckpointError, part.ParseFromString(bytes), "checkpoint: bad manifest part from a rank");
      for (const auto& e : part.tensors()) *m.add_tensors() = e;
    }
    write_durable((fs::path(tmp_dir) / "manifest.pb").string(), m.SerializeAsString());
    fsync_path(tmp_dir);
    remove_tree(final_dir);
    fs::rename(tmp_dir, final_dir);
    fsync_path(root_);
    const std::string latest_tmp = (fs::path(root_) / "latest.tmp").string();
    write_durable(latest_tmp, checkpoint_dir_name(state.step) + "\n");
    fs::rename(latest_tmp, fs::path(root_) / "latest");
    fsync_path(root_);
    // Keep the newest `keep` complete checkpoints.
    std::vector<std::string> steps;
    for (const auto& entry : fs::directory_iterator(root_)) {
      const auto name = entry.path().filename().string();
      if (entry.is_directory() && name.rfind("step_", 0) == 0) steps.push_back(name);
    }
    std::sort(steps.begin(), steps.end());
    for (size_t i = 0; i + keep_ < steps.size(); ++i) remove_tree((fs::path(root_) / steps[i]).string());
  }
  world.barrier();
}

proto::CheckpointManifest read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / "manifest.pb").string();
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(CheckpointError, in.good(), path, ": no checkpoint manifest here");
  std::stringstream buffer;
  buffer << in.rdbuf();
  proto::CheckpointManifest m;
  SY_CHECK_AS(CheckpointError, m.ParseFromString(buffer.str()), path, ": corrupt manifest (not a checkpoint manifest)");
  SY_CHECK_AS(CheckpointError, m.format_version() == kFormatVersion, path, ": format version ", m.format_version(),
              ", this build reads ", kFormatVersion);
  return m;
}

void verify_checkpoint(const std::string& dir, const proto::CheckpointManifest& manifest) {
  for (const auto& e : manifest.tensors()) read_tensor(dir, e);
}

TrainingState CheckpointManager::load(const std::string& dir, modules::TransformerLMImpl& model, AdamW& optimizer,
                                      const std::vector<parallel::ExpertPlacement>& placements) {
  const auto manifest = read_manifest(dir);
  std::map<std::string, const proto::TensorEntry*> by_name;
  for (const auto& e : manifest.tensors()) by_name[e.name()] = &e;
  auto fetch = [&](const std::string& name, const torch::Tensor& like) {
    auto it = by_name.find(name);
    SY_CHECK_AS(CheckpointError, it != by_name.end(), dir, ": no tensor ", name,
                " (was the checkpoint written by a different model config?)");
    auto t = read_tensor(dir, *it->second);
    SY_CHECK_AS(CheckpointError, t.sizes() == like.sizes(), dir, ": tensor ", name, " has shape ", t.sizes(),
                ", the model expects ", like.sizes());
    return t;
  };
  torch::NoGradGuard no_grad;
  const auto prefixes = moe_prefixes(model);
  for (const auto& item : model.named_parameters()) {
    const auto& name = item.key();
    auto p = item.value();
    auto& s = optimizer.state(name);
    if (parallel::is_expert_parameter(name)) {
      const auto ids = placements.at(moe_layer_of(name, prefixes)).experts_of(groups_->ep_rank);
      for (size_t i = 0; i < ids.size(); ++i) {
        p[i].copy_(fetch(expert_name(name, ids[i]), p[i]));
        s.exp_avg[i].copy_(fetch(expert_name("optim.exp_avg/" + name, ids[i]), s.exp_avg[i]));
        s.exp_avg_sq[i].copy_(fetch(expert_name("optim.exp_avg_sq/" + name, ids[i]), s.exp_avg_sq[i]));
      }
    } else {
      p.copy_(fetch(name, p));
      s.exp_avg.copy_(fetch("optim.exp_avg/" + name, s.exp_avg));
      s.exp_avg_sq.copy_(fetch("optim.exp_avg_sq/" + name, s.exp_avg_sq));
    }
  }
  for (auto item : model.named_buffers()) item.value().copy_(fetch("buffer/" + item.key(), item.value()));
  optimizer.set_steps(manifest.step());

  TrainingState state;
  state.step = manifest.step();
  state.tokens_seen = manifest.tokens_seen();
  state.skipped_steps = manifest.skipped_steps();
  state.data_seed = manifest.data_seed();
  state.data_windows = manifest.data_windows();
  const auto& rng = manifest.cpu_rng_state();
  state.cpu_rng_state = torch::empty({static_cast<int64_t>(rng.size())}, torch::kUInt8);
  std::memcpy(state.cpu_rng_state.data_ptr(), rng.data(), rng.size());
  // Every rank must agree the load succeeded before the next collective.
  groups_->world->barrier();
  return state;
}

}  // namespace switchyard::trainer
