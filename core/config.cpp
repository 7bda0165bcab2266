// YAML reading (with unknown-key rejection and full key paths), dumping, the reference table, and
// the cross-field rules of Config.
#include "core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <type_traits>

#include "core/error.h"
#include "core/router_traits.h"

namespace switchyard::core {
namespace {

std::string join_path(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

/// Shortest decimal text that parses back to the same double ("10", "0.001", "3.3e-09").
std::string format_number(double x) {
  char buf[64];
  if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.0f", x);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

/// format_number, kept a float in YAML ("10.0", not "10").
std::string format_double(double x) {
  std::string s = format_number(x);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

template <class E>
std::string enum_choices() {
  std::string out;
  for (const auto& [v, name] : EnumNames<E>::kValues) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string scalar_text(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsNull()) return "null";
  if (node.IsSequence()) return "a list";
  return "a mapping";
}

// ---------------------------------------------------------------------------------------------
// Reader: fills a struct from a YAML mapping, rejecting unknown keys and out-of-bounds values.
class YamlReader {
 public:
  YamlReader(YAML::Node node, std::string path) : node_(std::move(node)), path_(std::move(path)) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) {
      throw ConfigError(where() + "expected a mapping of keys, got " + scalar_text(node_));
    }
  }

  template <class T>
  void field(const char* key, T& value, const char* /*doc*/, Bounds bounds = Bounds::any()) {
    known_.push_back(key);
    if (!node_ || node_.IsNull()) return;
    YAML::Node child = node_[key];
    if (!child) return;
    const std::string key_path = join_path(path_, key);
    if (!child.IsScalar() && !(std::is_same_v<T, std::string> && child.IsNull())) {
      throw ConfigError(key_path + ": expected " + type_name<T>() + ", got " + scalar_text(child));
    }
    read_value(key_path, child, value);
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      const double x = static_cast<double>(value);
      if (!std::isfinite(x) || !bounds.contains(x)) {
        throw ConfigError(key_path + ": must be " + bounds.describe() + ", got " + child.Scalar());
      }
    }
  }

  template <class S>
  void section(const char* key, S& sub) {
    known_.push_back(key);
    YAML::Node child = node_ && !node_.IsNull() ? node_[key] : YAML::Node();
    YamlReader reader(child, join_path(path_, key));
    sub.visit(reader);
    reader.reject_unknown();
  }

  void reject_unknown() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& item : node_) {
      SY_CHECK_AS(ConfigError, item.first.IsScalar(), path_.empty() ? std::string("config") : path_,
                  ": a key that is not a name (a list or map used as a key)");
      const std::string key = item.first.as<std::string>();
      if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
      std::string best;
      size_t best_dist = std::max<size_t>(2, key.size() / 3) + 1;
      for (const auto& k : known_) {
        const size_t d = edit_distance(key, k);
        if (d < best_dist) {
          best_dist = d;
          best = k;
        }
      }
      std::string msg = join_path(path_, key) + ": unknown key";
      if (!best.empty()) msg += " (did you mean '" + join_path(path_, best) + "'?)";
      throw ConfigError(msg);
    }
  }

 private:
  std::string where() const { return path_.empty() ? "config: " : path_ + ": "; }

  template <class T>
  static std::string type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else if constexpr (std::is_same_v<T, std::string>) return "a string";
    else return "one of " + enum_choices<T>();
  }

  template <class T>
  static void read_value(const std::string& key_path, const YAML::Node& node, T& value) {
    if constexpr (std::is_same_v<T, std::string>) {
      value = node.IsNull() ? std::string() : node.Scalar();
    } else if constexpr (std::is_enum_v<T>) {
      for (const auto& [v, name] : EnumNames<T>::kValues) {
        if (node.Scalar() == name) {
          value = v;
          return;
        }
      }
      throw ConfigError(key_path + ": expected one of " + enum_choices<T>() + ", got '" + node.Scalar() + "'");
    } else {
      try {
        value = node.as<T>();
      } catch (const YAML::Exception&) {
        throw ConfigError(key_path + ": expected " + type_name<T>() + ", got '" + node.Scalar() + "'");
      }
    }
  }

  YAML::Node node_;
  std::string path_;
  std::vector<std::string> known_;
};

// ---------------------------------------------------------------------------------------------
// Writer: emits the resolved values as a block mapping.
class YamlWriter {
 public:
  explicit YamlWriter(YAML::Emitter& out) : out_(out) {}

  template <class T>
  void field(const char* key, const T& value, const char* /*doc*/, Bounds = Bounds::any()) {
    out_ << YAML::Key << key << YAML::Value;
    if constexpr (std::is_same_v<T, bool>) out_ << (value ? "true" : "false");
    else if constexpr (std::is_integral_v<T>) out_ << static_cast<long long>(value);
    else if constexpr (std::is_floating_point_v<T>) out_ << format_double(value);
    else if constexpr (std::is_same_v<T, std::string>) out_ << YAML::DoubleQuoted << value;
    else out_ << enum_name(value);
  }

  template <class S>
  void section(const char* key, S& sub) {
    out_ << YAML::Key << key << YAML::Value << YAML::BeginMap;
    sub.visit(*this);
    out_ << YAML::EndMap;
  }

 private:
  YAML::Emitter& out_;
};

// ---------------------------------------------------------------------------------------------
// Reference: one Markdown row per key.
class ReferenceWriter {
 public:
  explicit ReferenceWriter(std::ostringstream& out) : out_(out) {}

  template <class T>
  void field(const char* key, const T& value, const char* doc, Bounds bounds = Bounds::any()) {
    std::string type, def, allowed;
    if constexpr (std::is_same_v<T, bool>) {
      type = "bool";
      def = value ? "true" : "false";
    } else if constexpr (std::is_integral_v<T>) {
      type = "int";
      def = std::to_string(value);
      allowed = bounds.describe();
    } else if constexpr (std::is_floating_point_v<T>) {
      type = "float";
      def = format_double(value);
      allowed = bounds.describe();
    } else if constexpr (std::is_same_v<T, std::string>) {
      type = "string";
      def = "\"" + value + "\"";
    } else {
      type = "enum";
      def = enum_name(value);
      allowed = enum_choices<T>();
    }
    out_ << "| `" << join_path(prefix_, key) << "` | " << type << " | `" << def << "` | " << allowed << " | "
         << doc << " |\n";
  }

  template <class S>
  void section(const char* key, S& sub) {
    const std::string saved = prefix_;
    prefix_ = join_path(prefix_, key);
    sub.visit(*this);
    prefix_ = saved;
  }

 private:
  std::ostringstream& out_;
  std::string prefix_;
};

/// Applies one "a.b.c=value" override to the YAML tree; the key path and the value's type are checked
/// later by the reader, exactly as for keys read from the file.
void apply_override(YAML::Node& root, const std::string& override_text) {
  const auto eq = override_text.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("--set '" + override_text + "': expected key.path=value");
  }
  const std::string key_path = override_text.substr(0, eq);
  const std::string value_text = override_text.substr(eq + 1);
  std::vector<std::string> keys;
  std::stringstream ss(key_path);
  for (std::string part; std::getline(ss, part, '.');) {
    if (part.empty()) throw ConfigError("--set '" + override_text + "': empty component in key path");
    keys.push_back(part);
  }
  // Every config value is a scalar: keep the text as is and let the reader convert it to the
  // field's type (so "a: b" stays a string and "[1," is reported as a bad value of that key).
  const YAML::Node value(value_text);
  // Walk with fresh handles: assigning to a yaml-cpp Node handle rebinds shared state.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    YAML::Node next = chain.back()[keys[i]];
    if (next && !next.IsNull() && !next.IsMap()) {
      std::string prefix;
      for (size_t j = 0; j <= i; ++j) prefix = join_path(prefix, keys[j]);
      throw ConfigError("--set " + key_path + ": '" + prefix + "' is a value, not a section");
    }
    if (!next || next.IsNull()) chain.back()[keys[i]] = YAML::Node(YAML::NodeType::Map);
    chain.push_back(chain.back()[keys[i]]);
  }
  chain.back()[keys.back()] = value;
}

Config parse(YAML::Node root, const std::vector<std::string>& overrides) {
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw ConfigError("config: expected a mapping of sections at the top level");
  for (const auto& o : overrides) apply_override(root, o);
  Config config;
  YamlReader reader(root, "");
  config.visit(reader);
  reader.reject_unknown();
  config.validate();
  return config;
}

void require(bool ok, const std::string& message) {
  if (!ok) throw ConfigError(message);
}

}  // namespace

std::string Bounds::describe() const {
  const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  if (has_lo && has_hi) return std::string(lo_open ? "in (" : "in [") + format_number(lo) + ", " + format_number(hi) + "]";
  if (has_lo) return std::string(lo_open ? "> " : ">= ") + format_number(lo);
  if (has_hi) return "<= " + format_number(hi);
  return "finite";
}

Config load_config_text(const std::string& yaml, const std::vector<std::string>& overrides,
                        const std::string& source_name) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(source_name + ":" + std::to_string(e.mark.line + 1) + ":" +
                      std::to_string(e.mark.column + 1) + ": malformed YAML: " + e.msg);
  }
  return parse(root, overrides);
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open config file");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return load_config_text(buffer.str(), overrides, path);
}

std::string dump_config(const Config& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  YamlWriter writer(out);
  const_cast<Config&>(config).visit(writer);  // visit does not modify through the writer
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string config_reference_markdown() {
  std::ostringstream out;
  out << "| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n";
  Config defaults;
  ReferenceWriter writer(out);
  defaults.visit(writer);
  return out.str();
}

std::string family_mismatch(const ModelConfig& model, ModelFamily family) {
  const auto& moe = model.moe;
  const std::string name = enum_name(family);
  const auto why = [&](const std::string& key, const std::string& rule, const std::string& got) {
    return key + ": model.family " + name + " " + rule + ", got " + got;
  };
  if (family == ModelFamily::kCustom) return "model.family: custom names no Hugging Face architecture";
  if (moe.router.kind != RouterKind::kTopK) return why("model.moe.router.kind", "routes by softmax top-k (topk)", enum_name(moe.router.kind));
  if (moe.expert_kind != ExpertKind::kSwiGLU) return why("model.moe.expert_kind", "has SwiGLU experts", enum_name(moe.expert_kind));
  if (moe.shared_experts != 0) return why("model.moe.shared_experts", "has none", std::to_string(moe.shared_experts));
  if (moe.null_experts != 0) return why("model.moe.null_experts", "has none", std::to_string(moe.null_experts));
  if (moe.capacity_factor > 0) return why("model.moe.capacity_factor", "is dropless (<= 0)", format_double(moe.capacity_factor));
  const QkNorm qk = family == ModelFamily::kQwen3Moe ? QkNorm::kHead : family == ModelFamily::kOlmoe ? QkNorm::kFull : QkNorm::kNone;
  if (model.qk_norm != qk) return why("model.qk_norm", std::string("is ") + enum_name(qk), enum_name(model.qk_norm));
  if (family != ModelFamily::kQwen3Moe && moe.every != 1) {
    return why("model.moe.every", "has an MoE FFN in every layer (1)", std::to_string(moe.every));
  }
  if (family == ModelFamily::kMixtral && !moe.router.normalize_topk) {
    return why("model.moe.router.normalize_topk", "renormalizes the top-k gates (true)", "false");
  }
  return "";
}

void Config::validate() const {
  const auto& moe = model.moe;
  require(model.head_dim > 0 || model.d_model % model.n_heads == 0,
          "model.n_heads: must divide model.d_model (" + std::to_string(model.d_model) + ") unless model.head_dim is set, got " +
              std::to_string(model.n_heads));
  require(model.head_width() % 2 == 0,
          std::string(model.head_dim > 0 ? "model.head_dim: head width" : "model.n_heads: head width d_model / n_heads") +
              " must be even for RoPE, got " + std::to_string(model.head_width()));
  require(model.n_kv_heads == 0 || model.n_heads % model.n_kv_heads == 0,
          "model.n_kv_heads: must divide model.n_heads (" + std::to_string(model.n_heads) + "), got " +
              std::to_string(model.n_kv_heads));
  if (model.family != ModelFamily::kCustom) {
    const auto mismatch = family_mismatch(model, model.family);
    require(mismatch.empty(), mismatch);
  }
  require(moe.top_k <= moe.num_experts,
          "model.moe.top_k: must be <= model.moe.num_experts (" + std::to_string(moe.num_experts) + "), got " +
              std::to_string(moe.top_k));
  require(moe.every <= model.n_layers,
          "model.moe.every: must be <= model.n_layers (" + std::to_string(model.n_layers) + "), got " +
              std::to_string(moe.every));
  require(moe.num_experts % parallel.expert_parallel == 0,
          "parallel.expert_parallel: must divide model.moe.num_experts (" + std::to_string(moe.num_experts) +
              "), got " + std::to_string(parallel.expert_parallel));
  switch (moe.router.kind) {
    case RouterKind::kBilevel: {
      require(moe.num_experts % moe.router.groups == 0,
              "model.moe.router.groups: must divide model.moe.num_experts (" + std::to_string(moe.num_experts) +
                  "), got " + std::to_string(moe.router.groups));
      const int64_t per_group = moe.num_experts / moe.router.groups;
      require(moe.top_k <= per_group, "model.moe.top_k: bilevel picks top_k experts inside one group of " +
                                          std::to_string(per_group) + ", got " + std::to_string(moe.top_k));
      break;
    }
    case RouterKind::kGrap:
      require(model.d_model % moe.num_experts == 0,
              "model.moe.num_experts: grap needs it to divide model.d_model (" + std::to_string(model.d_model) +
                  "), got " + std::to_string(moe.num_experts));
      break;
    case RouterKind::kTopP:
      require(moe.router.k_max <= moe.num_experts,
              "model.moe.router.k_max: must be <= model.moe.num_experts (" + std::to_string(moe.num_experts) +
                  "), got " + std::to_string(moe.router.k_max));
      break;
    default:
      break;
  }
  const auto& traits = router_traits(moe.router.kind);
  require(!traits.own_capacity || moe.capacity_factor > 0,
          "model.moe.capacity_factor: " + std::string(enum_name(moe.router.kind)) + " needs a capacity (> 0), got " +
              format_double(moe.capacity_factor));
  require(moe.null_experts == 0 || traits.chooses_null_experts,
          "model.moe.null_experts: only " + router_kinds_where([](const RouterTraits& t) { return t.chooses_null_experts; }) +
              " routers can choose null experts, got router.kind " + std::string(enum_name(moe.router.kind)));
  require(losses.load_balance_scope == BalanceScope::kMicroBatch || traits.balance_loss != BalanceLoss::kBilevel,
          "losses.load_balance_scope: global_batch is not available for router.kind " +
              std::string(enum_name(moe.router.kind)) + " (its two-level balance is per micro-batch); use micro_batch");
  require(losses.contrastive == 0 || traits.prototypes,
          "losses.contrastive: needs model.moe.router.kind " + router_kinds_where([](const RouterTraits& t) { return t.prototypes; }) +
              ", got " + std::string(enum_name(moe.router.kind)));
  require(train.global_batch % train.micro_batch == 0,
          "train.global_batch: must be a multiple of train.micro_batch (" + std::to_string(train.micro_batch) +
              "), got " + std::to_string(train.global_batch));
  require(data.source == DataSource::kSynthetic || !data.path.empty() || !data.blend.empty(),
          "data.path: data.source " + std::string(enum_name(data.source)) + " needs a path (or data.blend)");
  require(data.blend.empty() || (data.path.empty() && data.source != DataSource::kSynthetic),
          "data.blend: replaces data.path (set one of them) and needs a data.source that reads files, got data.source " +
              std::string(enum_name(data.source)) + (data.path.empty() ? "" : " and data.path " + data.path));
  require(!data.reset_at_eod || (data.eod_id >= 0 && data.eod_id < model.vocab_size),
          "data.eod_id: data.reset_at_eod needs the end-of-document token, in [0, model.vocab_size " +
              std::to_string(model.vocab_size) + "), got " + std::to_string(data.eod_id));
  require(data.tokenizer.empty() || data.source == DataSource::kText,
          "data.tokenizer: only data.source text tokenizes (megatron and tokens data are tokenized already; "
          "switchyard tokenize makes megatron data), got data.source " + std::string(enum_name(data.source)));
  require(data.source != DataSource::kText || !data.tokenizer.empty() || model.vocab_size >= 256,
          "model.vocab_size: the byte tokenizer of data.source text needs >= 256, got " +
              std::to_string(model.vocab_size));
  require(train.precision == Precision::kFp32 || train.device == DeviceKind::kCuda,
          "train.precision: bf16 needs train.device cuda (CPU training runs in fp32)");
  require(parallel.backend != BackendKind::kNccl || train.device == DeviceKind::kCuda,
          "parallel.backend: nccl needs train.device cuda");
}

void ParallelConfig::validate_for_world(int world_size) const {
  require(world_size % expert_parallel == 0, "parallel.expert_parallel: must divide the number of ranks (" +
                                                 std::to_string(world_size) + "), got " + std::to_string(expert_parallel));
  require(ranks_per_node == 0 || world_size % ranks_per_node == 0,
          "parallel.ranks_per_node: must divide the number of ranks (" + std::to_string(world_size) + "), got " +
              std::to_string(ranks_per_node));
}

void Config::validate_for_world(int world_size) const {
  parallel.validate_for_world(world_size);
  require(train.global_batch % (train.micro_batch * world_size) == 0,
          "train.global_batch: must be a multiple of train.micro_batch * ranks (" +
              std::to_string(train.micro_batch) + " * " + std::to_string(world_size) + "), got " +
              std::to_string(train.global_batch));
}

}  // namespace switchyard::core
