// Checkpoint writing (atomic) and loading (re-sharding experts by global id).
#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include "core/build_info.h"
#include "core/crc32c.h"
#include "core/error.h"
#include "core/fault_injection.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "parallel/communicator.h"
#include "parallel/expert_parallel.h"

namespace switchyard::trainer {
namespace fs = std::filesystem;
namespace {

// 2: the manifest in a checksummed envelope (ManifestFile), the CUDA generator state.
constexpr int kFormatVersion = 2;

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

constexpr const char* kExpertFragment = "/expert_";

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

torch::Tensor read_tensor(const std::string& dir, const proto::TensorEntry& e) {
  // Everything the entry claims is checked against the file before anything is allocated for it.
  const fs::path file(e.file());
  SY_CHECK_AS(CheckpointError, !e.file().empty() && file == file.filename() && e.file() != "." && e.file() != "..",
              dir, ": tensor ", e.name(), " names file '", e.file(), "', not a file of the checkpoint directory");
  const std::string path = (fs::path(dir) / file).string();
  std::error_code ec;
  const auto file_bytes = static_cast<int64_t>(fs::file_size(path, ec));
  SY_CHECK_AS(CheckpointError, !ec, path, ": missing checkpoint file (tensor ", e.name(), ")");
  const auto dtype = dtype_from(e.dtype(), path);
  const int64_t element = static_cast<int64_t>(c10::elementSize(dtype));
  std::vector<int64_t> shape(e.shape().begin(), e.shape().end());
  int64_t numel = 1;
  for (const int64_t d : shape) {
    SY_CHECK_AS(CheckpointError, d >= 0 && (d == 0 || numel <= std::numeric_limits<int64_t>::max() / element / d), path,
                ": tensor ", e.name(), " has an impossible shape");
    numel *= d;
  }
  SY_CHECK_AS(CheckpointError, numel * element == e.nbytes(), path, ": tensor ", e.name(), " declares ", e.nbytes(),
              " bytes for its shape and dtype");
  SY_CHECK_AS(CheckpointError, e.offset() >= 0 && e.offset() <= file_bytes && e.nbytes() <= file_bytes - e.offset(),
              path, ": truncated: tensor ", e.name(), " wants ", e.nbytes(), " bytes at offset ", e.offset(),
              ", the file has ", file_bytes);
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(CheckpointError, in.good(), path, ": cannot open checkpoint file (tensor ", e.name(), ")");
  in.seekg(e.offset());
  auto t = torch::empty(shape, dtype);
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

std::string bytes_of(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU).contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel() * c.element_size()));
}

torch::Tensor tensor_of(const std::string& bytes) {
  auto t = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

/// The manifest's fields against each other and against the directory (a checksum proves the
/// bytes are as written; this proves they describe a checkpoint this code can have written).
void check_manifest_fields(const proto::CheckpointManifest& m, const std::string& dir, const std::string& path) {
  const auto bad = [&](const std::string& field, const std::string& why) {
    throw CheckpointError(path + ": field " + field + " " + why);
  };
  const auto name = fs::path(dir).lexically_normal().filename().string();
  if (m.step() < 0) bad("step", "is negative (" + std::to_string(m.step()) + ")");
  if (is_checkpoint_name(name) && name != checkpoint_dir_name(m.step())) {
    bad("step", "is " + std::to_string(m.step()) + " but the directory is " + name);
  }
  if (m.skipped_steps() < 0 || m.skipped_steps() > m.step()) {
    bad("skipped_steps", "is " + std::to_string(m.skipped_steps()) + " for " + std::to_string(m.step()) + " steps");
  }
  if (m.tokens_seen() < m.step()) {
    bad("tokens_seen", "is " + std::to_string(m.tokens_seen()) + " for " + std::to_string(m.step()) + " steps");
  }
  if (m.world_size() < 1 || m.expert_parallel() < 1 || m.world_size() % m.expert_parallel() != 0) {
    bad("world_size/expert_parallel", "(" + std::to_string(m.world_size()) + ", " + std::to_string(m.expert_parallel()) +
                                          ") do not describe a run");
  }
  if (!m.weights_only() && m.data_windows() < 1) bad("data_windows", "is " + std::to_string(m.data_windows()));
  if (m.weights_only() && m.step() != 0) bad("step", "is " + std::to_string(m.step()) + " in a weights-only checkpoint");
  for (int l = 0; l < m.placement_size(); ++l) {
    const auto& owners = m.placement(l).owner();
    std::vector<int64_t> held(m.expert_parallel(), 0);
    for (auto o : owners) {
      if (o < 0 || o >= m.expert_parallel()) bad("placement", "of MoE layer " + std::to_string(l) + " names rank " + std::to_string(o));
      ++held[o];
    }
    for (auto h : held) {
      if (h * m.expert_parallel() != owners.size()) bad("placement", "of MoE layer " + std::to_string(l) + " is unbalanced");
    }
  }
  for (const auto& e : m.tensors()) {
    const auto& f = e.file();
    const bool rank_file = f.rfind("rank_", 0) == 0 && f.size() > 9 && f.substr(f.size() - 4) == ".bin" &&
                           std::all_of(f.begin() + 5, f.end() - 4, [](char c) { return c >= '0' && c <= '9'; });
    if (!rank_file || std::stoll(f.substr(5, f.size() - 9)) >= m.world_size()) {
      bad("tensors", "lists file '" + f + "' for tensor " + e.name() + ", not a rank file of this checkpoint");
    }
    if (e.offset() < 0 || e.nbytes() < 0) bad("tensors", "gives tensor " + e.name() + " a negative extent");
  }
}

/// The one naming of checkpoint tensors, for save and load: visits every tensor this rank holds as
/// (checkpoint name, live tensor, whether it is one expert's slice): parameters, their AdamW moments
/// ("optim.exp_avg/<name>", "optim.exp_avg_sq/<name>"; none without an optimizer), buffers
/// ("buffer/<name>"); an expert parameter once per local expert, named by its global id
/// (expert_tensor_name).
void for_each_checkpoint_tensor(modules::TransformerLMImpl& model, AdamW* optimizer,
                                const std::vector<placement::ExpertPlacement>& placements, int64_t ep_rank,
                                const std::function<void(const std::string&, torch::Tensor, bool)>& fn) {
  const auto prefixes = moe_prefixes(model);
  for (const auto& item : model.named_parameters()) {
    const auto& name = item.key();
    const auto& p = item.value();
    AdamW::State* s = optimizer ? &optimizer->state(name) : nullptr;
    if (!parallel::is_expert_parameter(name)) {
      fn(name, p, false);
      if (s) {
        fn("optim.exp_avg/" + name, s->exp_avg, false);
        fn("optim.exp_avg_sq/" + name, s->exp_avg_sq, false);
      }
      continue;
    }
    const auto ids = placements.at(moe_layer_of(name, prefixes)).experts_of(ep_rank);
    for (size_t i = 0; i < ids.size(); ++i) {
      fn(expert_tensor_name(name, ids[i]), p[i], true);
      if (s) {
        fn(expert_tensor_name("optim.exp_avg/" + name, ids[i]), s->exp_avg[i], true);
        fn(expert_tensor_name("optim.exp_avg_sq/" + name, ids[i]), s->exp_avg_sq[i], true);
      }
    }
  }
  for (const auto& item : model.named_buffers()) fn("buffer/" + item.key(), item.value(), false);
}

/// Copies each visited tensor from the checkpoint at `dir`, checking its presence and shape.
std::function<void(const std::string&, torch::Tensor, bool)> tensor_loader(const std::string& dir,
                                                                         const proto::CheckpointManifest& manifest) {
  auto by_name = std::make_shared<std::map<std::string, const proto::TensorEntry*>>();
  for (const auto& e : manifest.tensors()) (*by_name)[e.name()] = &e;
  return [dir, by_name](const std::string& name, torch::Tensor t, bool) {
    auto it = by_name->find(name);
    SY_CHECK_AS(CheckpointError, it != by_name->end(), dir, ": no tensor ", name,
                " (was the checkpoint written by a different model config?)");
    const auto stored = read_tensor(dir, *it->second);
    SY_CHECK_AS(CheckpointError, stored.sizes() == t.sizes(), dir, ": tensor ", name, " has shape ", stored.sizes(),
                ", the model expects ", t.sizes());
    t.copy_(stored);
  };
}

/// Contiguous placements of every MoE layer of a single-process model (every expert on EP rank 0).
std::vector<placement::ExpertPlacement> single_process_placements(modules::TransformerLMImpl& model) {
  std::vector<placement::ExpertPlacement> placements;
  for (const auto& layer : model.moe_layers()) {
    if (!layer.is_empty()) placements.push_back(placement::ExpertPlacement::contiguous(layer->experts->num_local(), 1));
  }
  return placements;
}

}  // namespace

void write_weights_checkpoint(const std::string& dir, const std::string& config_yaml, modules::TransformerLMImpl& model) {
  const auto placements = single_process_placements(model);
  SY_CHECK_AS(IoError, !fs::exists(fs::symlink_status(dir)), dir, ": exists; choose a new checkpoint directory");
  const std::string tmp_dir = dir + ".tmp";
  core::remove_tree(tmp_dir);
  fs::create_directories(tmp_dir);
  TensorFileWriter writer("rank_0.bin");
  for_each_checkpoint_tensor(model, nullptr, placements, 0,
                             [&](const std::string& name, const torch::Tensor& t, bool) { writer.add(name, t); });
  core::write_file_atomically((fs::path(tmp_dir) / "rank_0.bin").string(), writer.bytes());
  proto::CheckpointManifest m;
  m.set_format_version(kFormatVersion);
  m.set_config_yaml(config_yaml);
  m.set_weights_only(true);
  m.set_cpu_rng_state(bytes_of(at::detail::getDefaultCPUGenerator().get_state()));
  m.set_world_size(1);
  m.set_expert_parallel(1);
  m.set_created_by(std::string("switchyard ") + SWITCHYARD_VERSION);
  for (const auto& p : placements) {
    auto* lp = m.add_placement();
    for (auto o : p.owners()) lp->add_owner(o);
  }
  for (const auto& e : writer.entries()) *m.add_tensors() = e;
  proto::ManifestFile file;
  file.set_manifest(m.SerializeAsString());
  file.set_crc32c(core::crc32c(file.manifest().data(), file.manifest().size()));
  core::write_file_atomically((fs::path(tmp_dir) / "manifest.pb").string(), file.SerializeAsString());
  core::sync_directory(tmp_dir);
  std::error_code ec;
  fs::rename(tmp_dir, dir, ec);
  SY_CHECK_AS(IoError, !ec, dir, ": cannot publish the checkpoint (", ec.message(), ")");
}

namespace {
void load_weights(const std::string& dir, const proto::CheckpointManifest& manifest, modules::TransformerLMImpl& model) {
  torch::NoGradGuard no_grad;
  for_each_checkpoint_tensor(model, nullptr, single_process_placements(model), 0, tensor_loader(dir, manifest));
}
}  // namespace

void load_weights(const std::string& dir, modules::TransformerLMImpl& model) { load_weights(dir, read_manifest(dir), model); }

CheckpointModel load_checkpoint_model(const std::string& dir) {
  const auto manifest = read_manifest(dir);
  CheckpointModel m;
  m.config = core::load_config_text(manifest.config_yaml(), {}, dir + "/manifest.pb");
  m.model = modules::TransformerLM(m.config.model, m.config.losses, static_cast<uint64_t>(m.config.train.seed));
  load_weights(dir, manifest, *m.model);
  return m;
}

std::string expert_tensor_name(const std::string& param, int64_t global_id) {
  return param + kExpertFragment + std::to_string(global_id);
}

bool is_expert_tensor(const std::string& name) { return name.find(kExpertFragment) != std::string::npos; }

bool is_checkpoint_name(const std::string& name) {
  if (name.size() != 13 || name.rfind("step_", 0) != 0) return false;
  return std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string checkpoint_dir_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  return name;
}

CheckpointManager::CheckpointManager(std::string root, int64_t keep, std::shared_ptr<parallel::ProcessGroups> groups)
    : root_(std::move(root)), keep_(keep), groups_(std::move(groups)) {}

LatestPointer CheckpointManager::latest() const {
  LatestPointer p;
  const auto path = fs::path(root_) / "latest";
  std::error_code ec;
  const auto status = fs::symlink_status(path, ec);
  if (ec || status.type() == fs::file_type::not_found) return p;
  p.present = true;
  const std::string where = path.string();
  if (status.type() != fs::file_type::regular) {
    p.problem = where + " is not a regular file";
    return p;
  }
  std::ifstream in(path);
  std::string name;
  if (!in || !std::getline(in, name)) {
    p.problem = where + " is empty or unreadable";
    return p;
  }
  if (name.find('/') != std::string::npos || name == "." || name == "..") {
    p.outside = true;
    p.problem = where + " names '" + name + "', outside " + root_;
    return p;
  }
  if (!is_checkpoint_name(name)) {
    p.problem = where + " names '" + name + "', not a checkpoint (step_<8 digits>)";
    return p;
  }
  const auto dir = fs::path(root_) / name;
  if (!fs::is_directory(fs::symlink_status(dir, ec)) || ec) {
    p.problem = where + " names " + name + ", which is not a checkpoint directory here";
    return p;
  }
  p.dir = dir.string();
  return p;
}

std::vector<std::string> CheckpointManager::checkpoints() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(root_, ec), end; !ec && it != end; it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (is_checkpoint_name(name) && fs::is_directory(fs::symlink_status(it->path()))) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> dirs;
  for (const auto& n : names) dirs.push_back((fs::path(root_) / n).string());
  return dirs;
}

void CheckpointManager::save(const TrainingState& state, const std::string& config_yaml,
                             modules::TransformerLMImpl& model, AdamW& optimizer,
                             const std::vector<placement::ExpertPlacement>& placements) {
  auto& world = *groups_->world;
  const bool dense_writer = world.rank() == 0;
  const bool expert_writer = groups_->expert_dp->rank() == 0;  // the first expert-parallel group
  const std::string final_dir = (fs::path(root_) / checkpoint_dir_name(state.step)).string();
  const std::string tmp_dir = (fs::path(root_) / (".tmp_" + checkpoint_dir_name(state.step))).string();
  if (dense_writer) {
    fs::create_directories(root_);
    core::remove_tree(tmp_dir);  // leftovers of a crashed save
    fs::create_directories(tmp_dir);
  }
  world.barrier();

  TensorFileWriter writer("rank_" + std::to_string(world.rank()) + ".bin");
  for_each_checkpoint_tensor(model, &optimizer, placements, groups_->ep_rank,
                             [&](const std::string& name, const torch::Tensor& t, bool expert) {
                               if (expert ? expert_writer : dense_writer) writer.add(name, t);
                             });
  if (!writer.empty()) {
    core::write_file_atomically((fs::path(tmp_dir) / ("rank_" + std::to_string(world.rank()) + ".bin")).string(),
                                writer.bytes());
  }

  proto::CheckpointManifest mine;
  for (const auto& e : writer.entries()) *mine.add_tensors() = e;
  const auto gathered = parallel::all_gather_bytes(world, mine.SerializeAsString());
  // Test hook: die after the tensor files of this step's checkpoint are written, before it completes.
  if (core::fault_at("kill_in_checkpoint", state.step)) std::raise(SIGKILL);

  if (dense_writer) {
    proto::CheckpointManifest m;
    m.set_format_version(kFormatVersion);
    m.set_config_yaml(config_yaml);
    m.set_step(state.step);
    m.set_tokens_seen(state.tokens_seen);
    m.set_skipped_steps(state.skipped_steps);
    m.set_cpu_rng_state(bytes_of(state.cpu_rng_state));
    if (state.cuda_rng_state.defined()) m.set_cuda_rng_state(bytes_of(state.cuda_rng_state));
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
    proto::ManifestFile file;
    file.set_manifest(m.SerializeAsString());
    file.set_crc32c(core::crc32c(file.manifest().data(), file.manifest().size()));
    core::write_file_atomically((fs::path(tmp_dir) / "manifest.pb").string(), file.SerializeAsString());
    core::sync_directory(tmp_dir);
    core::remove_tree(final_dir);
    std::error_code ec;
    fs::rename(tmp_dir, final_dir, ec);
    SY_CHECK_AS(IoError, !ec, final_dir, ": cannot publish the checkpoint (", ec.message(), ")");
    core::sync_directory(root_);
    core::write_file_atomically((fs::path(root_) / "latest").string(), checkpoint_dir_name(state.step) + "\n");
    // Keep the newest `keep` complete checkpoints.
    const auto existing = checkpoints();
    for (size_t i = 0; i + keep_ < existing.size(); ++i) core::remove_tree(existing[i]);
  }
  world.barrier();
}

proto::CheckpointManifest read_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / "manifest.pb").string();
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(CheckpointError, in.good(), path, ": no checkpoint manifest here");
  std::stringstream buffer;
  buffer << in.rdbuf();
  proto::ManifestFile file;
  SY_CHECK_AS(CheckpointError, file.ParseFromString(buffer.str()), path,
              ": corrupt manifest (not a checkpoint manifest of format ", kFormatVersion, ")");
  const uint32_t crc = core::crc32c(file.manifest().data(), file.manifest().size());
  if (crc != file.crc32c()) {
    char msg[80];
    std::snprintf(msg, sizeof(msg), "expected crc32c %08x, got %08x", file.crc32c(), crc);
    throw CheckpointError(path + ": checksum mismatch in the manifest: " + msg);
  }
  proto::CheckpointManifest m;
  SY_CHECK_AS(CheckpointError, m.ParseFromString(file.manifest()), path, ": corrupt manifest (does not parse)");
  SY_CHECK_AS(CheckpointError, m.format_version() == kFormatVersion, path, ": format version ", m.format_version(),
              ", this build reads ", kFormatVersion);
  check_manifest_fields(m, dir, path);
  return m;
}

void verify_checkpoint(const std::string& dir, const proto::CheckpointManifest& manifest) {
  for (const auto& e : manifest.tensors()) read_tensor(dir, e);
}

TrainingState CheckpointManager::load(const std::string& dir, modules::TransformerLMImpl& model, AdamW& optimizer,
                                      const std::vector<placement::ExpertPlacement>& placements) {
  const auto manifest = read_manifest(dir);
  torch::NoGradGuard no_grad;
  for_each_checkpoint_tensor(model, manifest.weights_only() ? nullptr : &optimizer, placements, groups_->ep_rank,
                             tensor_loader(dir, manifest));
  optimizer.set_steps(manifest.step());

  TrainingState state;
  state.weights_only = manifest.weights_only();
  state.step = manifest.step();
  state.tokens_seen = manifest.tokens_seen();
  state.skipped_steps = manifest.skipped_steps();
  state.data_seed = manifest.data_seed();
  state.data_windows = manifest.data_windows();
  state.cpu_rng_state = tensor_of(manifest.cpu_rng_state());
  if (!manifest.cuda_rng_state().empty()) state.cuda_rng_state = tensor_of(manifest.cuda_rng_state());
  // Every rank must agree the load succeeded before the next collective.
  groups_->world->barrier();
  return state;
}

}  // namespace switchyard::trainer
