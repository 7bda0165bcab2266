// The config-space differential tester: random configurations (config_space_cases.h), each run
// distributed under mpirun and compared with the single-process model.
//
//   mpirun -np 4 config_space_test [--seed S] [--cases N] [--first I] [--verbose]
//
// Per case, on the case's first `world` ranks (the distributed run may recompute activations in the
// backward, the reference never does):
//   layer level: one MoE layer with uneven tokens per rank (0 and 1 included) against a single-process
//     layer on each rank's own tokens (outputs, input and parameter gradients, every loss, routing
//     statistics); for per-token routing also against one layer on all ranks' tokens (outputs).
//   train level: `Trainer` on those ranks against `Trainer` on one rank with expert_parallel 1 (rank
//     0): two steps' losses, loads, drops and every gradient; a checkpoint re-sharded to one rank
//     (parameters) and resumed on the same ranks (bitwise equal gradients); a routing trace (token
//     counts, and the routing itself).
//   everywhere: no crash, finite values, routed and dropped slots adding up.
// The promise matrix (which cases must equal the reference) is Case::invariant(); docs/parallel.md.
// A crash prints the case and aborts; a mismatch prints the case and fails the run at the end.
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/file_io.h"
#include "core/error.h"
#include "core/logging.h"
#include "modules/moe_layer.h"
#include "parallel/communicator.h"
#include "parallel/expert_parallel.h"
#include "placement/plan_file.h"
#include "tests/fuzz/config_space_cases.h"
#include "trainer/trainer.h"

namespace switchyard::fuzz {
namespace {

namespace fs = std::filesystem;
using parallel::Communicator;
using Comm = std::shared_ptr<Communicator>;

/// Mismatches of one case on this rank.
struct Failures {
  std::vector<std::string> lines;
  void add(const std::string& what) { lines.push_back(what); }
};

bool finite(const torch::Tensor& t) { return !t.defined() || torch::isfinite(t.detach()).all().item<bool>(); }

/// |a - b| <= rtol |b| + atol, in L2 over the elements (double).
void expect_close(Failures& f, const std::string& what, const torch::Tensor& a, const torch::Tensor& b, double rtol = 1e-4,
                  double atol = 1e-6) {
  if (!a.defined() || !b.defined()) {
    if (a.defined() != b.defined()) f.add(what + ": defined on one side only");
    return;
  }
  const auto ad = a.detach().to(torch::kCPU, torch::kDouble), bd = b.detach().to(torch::kCPU, torch::kDouble);
  if (ad.sizes() != bd.sizes()) {
    std::ostringstream o;
    o << what << ": shape " << ad.sizes() << " vs " << bd.sizes();
    f.add(o.str());
    return;
  }
  if (!finite(ad)) f.add(what + ": not finite");
  const double diff = (ad - bd).norm().item<double>(), ref = bd.norm().item<double>();
  if (diff > rtol * ref + atol) {
    std::ostringstream o;
    o << what << ": |a - b| = " << diff << " against |b| = " << ref;
    f.add(o.str());
  }
}

void expect_scalar(Failures& f, const std::string& what, double a, double b, double rtol = 1e-5) {
  if (!std::isfinite(a)) f.add(what + ": not finite (" + std::to_string(a) + ")");
  if (std::fabs(a - b) > rtol * std::max(1.0, std::fabs(b))) {
    std::ostringstream o;
    o.precision(9);
    o << what << ": " << a << " vs " << b;
    f.add(o.str());
  }
}

/// The routing decisions of two traces (expert per slot, -1 for a dropped slot, and the slot's gate)
/// that differ other than by an exact tie broken the other way. Tokens with identical hidden states
/// (a token repeated at the start of a sequence: causal attention gives both the same output) have
/// equal gates in exact arithmetic; rounding then depends on their row in the batch, so which of them
/// an expert at capacity drops may differ between two correct runs, at any precision. Such a swap
/// keeps, per expert, the same gates (the same number of slots, each kept gate matched by one within
/// 1e-5); anything else (another expert, a kept gate with no equal) is counted.
int64_t untied_differences(const std::vector<int32_t>& expert_a, const std::vector<float>& gate_a,
                           const std::vector<int32_t>& expert_b, const std::vector<float>& gate_b) {
  int64_t untied = 0;
  std::map<int32_t, std::vector<float>> kept_a, kept_b;  // expert -> gates kept on one side only
  for (size_t i = 0; i < expert_a.size(); ++i) {
    if (expert_a[i] == expert_b[i]) continue;
    if (expert_b[i] < 0) kept_a[expert_a[i]].push_back(gate_a[i]);
    else if (expert_a[i] < 0) kept_b[expert_b[i]].push_back(gate_b[i]);
    else ++untied;
  }
  for (auto* side : {&kept_a, &kept_b}) {
    const auto& other = side == &kept_a ? kept_b : kept_a;
    for (auto& [expert, gates] : *side) {
      auto theirs = other.count(expert) ? other.at(expert) : std::vector<float>{};
      std::sort(gates.begin(), gates.end());
      std::sort(theirs.begin(), theirs.end());
      if (gates.size() != theirs.size()) {
        untied += static_cast<int64_t>(gates.size());
        continue;
      }
      for (size_t i = 0; i < gates.size(); ++i) untied += std::fabs(gates[i] - theirs[i]) > 1e-5f * std::fabs(theirs[i]);
    }
  }
  return untied;
}

/// Named tensors broadcast from `root` (names, shapes and values in fp64).
using Named = std::vector<std::pair<std::string, torch::Tensor>>;
Named broadcast_named(Communicator& world, const Named& mine, int root) {
  std::ostringstream text;
  int64_t total = 0;
  for (const auto& [name, t] : mine) {
    text << name << '|';
    for (auto d : t.sizes()) text << d << ',';
    text << '\n';
    total += t.numel();
  }
  const std::string header = parallel::broadcast_bytes(world, text.str(), root);
  Named out;
  std::istringstream in(header);
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  total = 0;
  for (std::string line; std::getline(in, line);) {
    const auto bar = line.find('|');
    std::vector<int64_t> shape;
    std::istringstream dims(line.substr(bar + 1));
    for (std::string d; std::getline(dims, d, ',');) shape.push_back(std::stoll(d));
    int64_t n = 1;
    for (auto d : shape) n *= d;
    total += n;
    shapes.emplace_back(line.substr(0, bar), shape);
  }
  torch::Tensor flat;
  if (world.rank() == root) {
    std::vector<torch::Tensor> parts;
    for (const auto& [name, t] : mine) parts.push_back(t.detach().to(torch::kCPU, torch::kDouble).reshape({-1}));
    flat = parts.empty() ? torch::zeros({0}, torch::kDouble) : torch::cat(parts);
  } else {
    flat = torch::zeros({total}, torch::kDouble);
  }
  world.broadcast(flat, root);
  int64_t offset = 0;
  for (const auto& [name, shape] : shapes) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    out.emplace_back(name, flat.narrow(0, offset, n).view(shape));
    offset += n;
  }
  return out;
}

/// The MoE layer index (among MoE layers) of a parameter name "blocks.<l>.moe....", or -1.
int64_t moe_index(trainer::Trainer& t, const std::string& name) {
  const auto layers = t.model().moe_layers();
  int64_t idx = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].is_empty()) continue;
    if (name.rfind("blocks." + std::to_string(l) + ".moe.", 0) == 0) return idx;
    ++idx;
  }
  return -1;
}

/// A step's results and every gradient, named.
Named step_record(trainer::Trainer& t, const trainer::Trainer::StepResult& r) {
  Named n = {{"lm_loss", torch::tensor(r.lm_loss)}, {"aux_loss", torch::tensor(r.aux_loss)},
             {"dropped", torch::tensor(r.dropped)}, {"routed", torch::tensor(r.routed)},
             {"grad_norm", torch::tensor(r.grad_norm)}};
  for (const auto& [name, v] : r.losses) n.emplace_back("loss " + name, torch::tensor(v));
  for (size_t l = 0; l < r.loads.size(); ++l) n.emplace_back("load " + std::to_string(l), r.loads[l]);
  for (const auto& item : t.model().named_parameters()) n.emplace_back("grad " + item.key(), item.value().grad());
  return n;
}

Named parameters_of(trainer::Trainer& t) {
  Named n;
  for (const auto& item : t.model().named_parameters()) n.emplace_back("param " + item.key(), item.value());
  for (const auto& item : t.model().named_buffers()) n.emplace_back("buffer " + item.key(), item.value());
  return n;
}

/// This rank's share of `ref`'s entry for `name`: expert tensors [E, ...] narrowed to local experts.
torch::Tensor share_of(trainer::Trainer& t, const std::string& name, const torch::Tensor& ref) {
  const auto param = name.substr(name.find(' ') + 1);
  if (!parallel::is_expert_parameter(param)) return ref;
  const auto ids = t.local_expert_ids(static_cast<size_t>(moe_index(t, param)));
  return ref.index_select(0, torch::tensor(ids, torch::kInt64));
}

/// Compares this rank's record with the reference's, entry by entry. `full_reference`: the
/// reference holds every expert (narrowed to this rank's); else both hold this rank's experts.
void compare_records(Failures& f, trainer::Trainer& t, const std::string& where, const Named& mine, const Named& ref,
                     double rtol, bool full_reference = true) {
  std::map<std::string, torch::Tensor> by_name(ref.begin(), ref.end());
  for (const auto& [name, value] : mine) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      f.add(where + " " + name + ": missing in the reference");
      continue;
    }
    const auto expected = full_reference ? share_of(t, name, it->second) : it->second;
    if (value.dim() == 0) expect_scalar(f, where + " " + name, value.item<double>(), expected.item<double>(), rtol);
    else expect_close(f, where + " " + name, value, expected, rtol);
  }
  if (mine.size() != ref.size()) f.add(where + ": " + std::to_string(mine.size()) + " entries, the reference has " + std::to_string(ref.size()));
}

/// Slots routed and dropped add up for this router (stats of `tokens` tokens).
void check_slots(Failures& f, const Case& c, const modules::MoEStats& s, int64_t tokens, const std::string& where) {
  const auto& moe = c.config.model.moe;
  const int64_t routed = s.routed_slots.item<int64_t>(), dropped = s.dropped_slots.item<int64_t>();
  const int64_t delivered = s.expert_idx.ge(0).sum().item<int64_t>();
  const int64_t k = moe.top_k;
  std::ostringstream o;
  o << where << ": " << tokens << " tokens, routed " << routed << ", dropped " << dropped << ", delivered " << delivered;
  if (moe.router.kind == core::RouterKind::kExpertChoice) {
    const int64_t untaken = tokens == 0 ? 0 : s.expert_idx.ge(0).any(1).logical_not().sum().item<int64_t>();
    if (routed != tokens * k || dropped != untaken * k) f.add(o.str() + " (expert_choice: routed = T k, dropped = k untaken)");
  } else if (moe.router.kind == core::RouterKind::kTopP) {
    if (delivered + dropped != routed || routed < tokens || routed > tokens * moe.router.k_max)
      f.add(o.str() + " (top_p: delivered + dropped = routed in [T, T k_max])");
  } else if (routed != tokens * k || delivered + dropped != routed) {
    f.add(o.str() + " (delivered + dropped = routed = T k)");
  }
}

// ---- Layer level ----

// Long on purpose: one straight sequence (build both layers with equal weights, run the distributed
// and the reference forward and backward, compare outputs, losses, statistics and every gradient),
// read top to bottom like the property it checks.
void layer_check(const Case& c, const Comm& comm, Failures& f) {
  auto cfg = c.config;
  const auto dtype = cfg.train.precision == core::Precision::kFp64 ? torch::kFloat64 : torch::kFloat32;
  const auto& moe = cfg.model.moe;
  const int rank = comm->rank(), world = comm->size();
  auto groups = parallel::ProcessGroups::create(comm, cfg.parallel);
  const auto placement = c.plan.empty() ? placement::ExpertPlacement::contiguous(moe.num_experts, groups->ep_size)
                                        : placement::ExpertPlacement(c.plan[0], groups->ep_size);
  auto dispatcher = std::make_shared<parallel::ExpertParallelDispatcher>(groups, placement, cfg.parallel.dispatcher, true,
                                                                         modules::every_slot_routed(moe));
  const uint64_t seed = static_cast<uint64_t>(cfg.train.seed);
  torch::manual_seed(seed);
  modules::MoELayer layer(cfg.model, cfg.losses, 0, seed, dispatcher);
  parallel::attach(*layer, *dispatcher, *groups, cfg);
  layer->to(dtype);
  torch::manual_seed(seed);
  modules::MoELayer local(cfg.model, cfg.losses, 0, seed);  // every expert, this rank's tokens
  local->to(dtype);
  auto mask = dispatcher->node_local_expert_mask();
  if (moe.null_experts > 0) mask = torch::cat({mask, torch::ones({moe.null_experts}, torch::kBool)});
  local->set_local_expert_mask(mask);
  if (cfg.losses.load_balance_scope == core::BalanceScope::kGlobalBatch) {
    local->set_count_reducer([comm](const torch::Tensor& counts) {
      auto total = counts.clone();
      comm->all_reduce(total, parallel::ReduceOp::kSum);
      return total;
    });
  }

  int64_t total = 0, offset = 0;
  for (int r = 0; r < world; ++r) {
    if (r < rank) offset += c.layer_tokens[r];
    total += c.layer_tokens[r];
  }
  const int64_t n = c.layer_tokens[rank];
  torch::manual_seed(seed + 17);
  const auto x_all = torch::randn({total, cfg.model.d_model}).to(dtype);
  const auto probe_all = torch::randn({total, cfg.model.d_model}).to(dtype);
  const auto ids_all = torch::randint(0, cfg.model.vocab_size, {total}, torch::kInt64);
  const auto counters_all = torch::arange(total, torch::kInt64) + 1000;
  const auto mine = [&](const torch::Tensor& t) { return t.narrow(0, offset, n); };

  const auto x = mine(x_all).clone().requires_grad_();
  const auto out = layer->forward(x, {mine(ids_all), mine(counters_all)});
  auto loss = (out.y * mine(probe_all)).sum();
  for (const auto& [name, v] : out.losses) loss = loss + v;
  loss.backward();
  parallel::sync_gradients(*layer, *groups);

  const auto x_ref = mine(x_all).clone().requires_grad_();
  const auto ref = local->forward(x_ref, {mine(ids_all), mine(counters_all)});
  auto ref_loss = (ref.y * mine(probe_all)).sum();
  for (const auto& [name, v] : ref.losses) ref_loss = ref_loss + v;
  ref_loss.backward();

  expect_close(f, "layer y", out.y, ref.y, 1e-5);
  if (n > 0) expect_close(f, "layer x.grad", x.grad(), x_ref.grad(), 1e-4);
  if (out.losses.size() != ref.losses.size()) f.add("layer: loss terms differ in number");
  for (const auto& [name, v] : out.losses) {
    if (ref.losses.count(name)) expect_scalar(f, "layer loss " + name, v.item<double>(), ref.losses.at(name).item<double>(), 1e-5);
  }
  expect_close(f, "layer tokens_per_expert", out.stats.tokens_per_expert, ref.stats.tokens_per_expert, 0, 0);
  expect_scalar(f, "layer dropped", out.stats.dropped_slots.item<double>(), ref.stats.dropped_slots.item<double>(), 0);
  check_slots(f, c, out.stats, n, "layer slots");
  // Gradients: the distributed ones (after sync, divided by the world size) against the sum of every
  // rank's single-process gradients over the same world size.
  const auto ids = torch::tensor(dispatcher->local_expert_ids(), torch::kInt64);
  auto ref_params = local->named_parameters();
  for (const auto& p : layer->named_parameters()) {
    auto g = ref_params[p.key()].grad();
    g = g.defined() ? g.clone() : torch::zeros_like(ref_params[p.key()]);
    comm->all_reduce(g, parallel::ReduceOp::kSum);
    g = g / static_cast<double>(world);
    if (parallel::is_expert_parameter(p.key())) g = g.index_select(0, ids);
    expect_close(f, "layer grad " + p.key(), p.value().grad(), g, 1e-4);
  }
  // Per-token routing: the same outputs as one layer on every rank's tokens.
  if (c.per_token_routing()) {
    torch::manual_seed(seed);
    modules::MoELayer single(cfg.model, cfg.losses, 0, seed);
    single->to(dtype);
    torch::NoGradGuard no_grad;
    const auto y_all = single->forward(x_all, {ids_all, counters_all}).y;
    expect_close(f, "layer y vs all tokens", out.y, y_all.narrow(0, offset, n), 1e-5);
  }
}

// ---- Train level ----

void train_check(const Case& c, const Comm& world, const Comm& sub, const Comm& self, const std::string& dir,
                 Failures& f) {
  const int rank = world->rank();
  const bool in_case = rank < c.world;
  if (rank == 0) fs::create_directories(dir);
  auto dist_cfg = c.config;
  dist_cfg.train.run_dir = dir + "/dist";
  if (!c.plan.empty()) {
    dist_cfg.parallel.placement = dir + "/plan.yaml";
    if (rank == 0) {
      std::vector<placement::ExpertPlacement> placements;
      for (const auto& owner : c.plan) placements.emplace_back(owner, c.config.parallel.expert_parallel);
      placement::save_placement_plan(dist_cfg.parallel.placement, placements, c.config.parallel.expert_parallel);
    }
    world->barrier();
  }
  auto ref_cfg = c.config;
  ref_cfg.parallel.expert_parallel = 1;
  ref_cfg.parallel.ranks_per_node = 0;
  ref_cfg.parallel.dispatcher = core::DispatcherKind::kFlat;
  ref_cfg.parallel.overlap_chunks = 1;
  ref_cfg.train.micro_batch = c.reference_micro_batch;
  ref_cfg.train.recompute = core::RecomputeKind::kNone;
  ref_cfg.train.run_dir = dir + "/ref";

  std::unique_ptr<trainer::Trainer> dist, ref;
  if (in_case) dist = std::make_unique<trainer::Trainer>(dist_cfg, parallel::RunWorld{sub, torch::kCPU});
  if (rank == 0) ref = std::make_unique<trainer::Trainer>(ref_cfg, parallel::RunWorld{self, torch::kCPU});
  const bool compare = c.invariant();
  // Routing traces before any update (the parameters still equal bitwise): token counts, and the
  // routing itself where it is rank-invariant.
  const int64_t trace_tokens = c.config.train.global_batch * c.config.model.seq_len;
  placement::RoutingTrace td, tr;
  if (in_case) td = dist->trace(trace_tokens);
  if (rank == 0) tr = ref->trace(trace_tokens);
  Named theirs;
  if (rank == 0) {
    for (size_t l = 0; l < tr.layers.size(); ++l) {
      theirs.emplace_back("trace " + std::to_string(l), torch::tensor(std::vector<int64_t>(tr.layers[l].experts.begin(), tr.layers[l].experts.end())));
      theirs.emplace_back("trace gates " + std::to_string(l), torch::tensor(tr.layers[l].gates));
    }
  }
  theirs = broadcast_named(*world, theirs, 0);
  if (in_case) {
    const int64_t slots = modules::routing_slots(c.config.model.moe);
    for (size_t l = 0; l < td.layers.size(); ++l) {
      const auto& layer = td.layers[l];
      if (layer.num_tokens() != trace_tokens || static_cast<int64_t>(layer.experts.size()) != trace_tokens * slots ||
          layer.top_k != slots) {
        f.add("trace layer " + std::to_string(l) + ": " + std::to_string(layer.num_tokens()) + " tokens, " +
              std::to_string(layer.experts.size()) + " slots, width " + std::to_string(layer.top_k) + "; expected " +
              std::to_string(trace_tokens) + " tokens of " + std::to_string(slots) + " slots");
      }
      if (compare) {
        const auto ref_experts = theirs.at(2 * l).second.to(torch::kInt32).contiguous();
        const auto ref_gates = theirs.at(2 * l + 1).second.to(torch::kFloat32).contiguous();
        if (ref_experts.numel() != static_cast<int64_t>(layer.experts.size())) {
          f.add("trace layer " + std::to_string(l) + ": " + std::to_string(layer.experts.size()) + " slots vs " +
                std::to_string(ref_experts.numel()));
          continue;
        }
        const auto untied = untied_differences(
            layer.experts, layer.gates, std::vector<int32_t>(ref_experts.data_ptr<int32_t>(), ref_experts.data_ptr<int32_t>() + ref_experts.numel()),
            std::vector<float>(ref_gates.data_ptr<float>(), ref_gates.data_ptr<float>() + ref_gates.numel()));
        if (untied > 0) f.add("trace layer " + std::to_string(l) + " routing: " + std::to_string(untied) + " slots differ (not a tie)");
      }
    }
  }
  // One step of both runs: losses, loads, drops, every gradient; then the update.
  const auto step_both = [&](const std::string& where) {
    Named mine, theirs;
    trainer::Trainer::StepResult rd, rr;
    if (in_case) {
      rd = dist->compute_gradients();
      mine = step_record(*dist, rd);
      for (const auto& [name, t] : mine)
        if (!finite(t)) f.add(where + " " + name + ": not finite");
      if (rd.dropped > rd.routed || rd.dropped < 0) f.add(where + ": dropped " + std::to_string(rd.dropped) + " > routed " + std::to_string(rd.routed));
    }
    if (rank == 0) {
      rr = ref->compute_gradients();
      theirs = step_record(*ref, rr);
    }
    theirs = broadcast_named(*world, theirs, 0);
    if (in_case && compare) compare_records(f, *dist, where, mine, theirs, 2e-4);
    if (in_case) dist->apply_update(rd);
    if (rank == 0) ref->apply_update(rr);
  };
  // A checkpoint of the distributed run, loaded on one rank (re-sharded) and compared with the
  // reference's own state; then the reference continues from it, so both start the next step from the
  // same bits (a rounding-level difference in parameters could flip a near-tie routing decision).
  const auto save_and_share = [&]() {
    if (in_case) dist->save_checkpoint();
    world->barrier();
    const std::string ckpt = dist_cfg.train.run_dir + "/checkpoints/" + trainer::checkpoint_dir_name(dist ? dist->step() : 0);
    if (rank == 0) {
      auto ref2_cfg = ref_cfg;
      ref2_cfg.train.run_dir = dir + "/ref2";
      trainer::Trainer ref2(ref2_cfg, parallel::RunWorld{self, torch::kCPU});
      ref2.load_checkpoint(ckpt);
      Failures g;
      compare_records(g, ref2, "re-sharded to one rank, step " + std::to_string(ref2.step()), parameters_of(ref2),
                      parameters_of(*ref), compare ? 2e-4 : 1e30);
      for (auto& l : g.lines) f.add(l);
      ref->load_checkpoint(ckpt);
    }
    return ckpt;
  };
  step_both("train step 1");
  save_and_share();
  step_both("train step 2");
  const auto ckpt = save_and_share();
  // Resumed on the same ranks: the same parameters and the same next step, bitwise.
  if (in_case) {
    auto again_cfg = dist_cfg;
    again_cfg.train.run_dir = dir + "/dist2";
    trainer::Trainer again(again_cfg, parallel::RunWorld{sub, torch::kCPU});
    again.load_checkpoint(ckpt);
    compare_records(f, *dist, "resumed", parameters_of(again), parameters_of(*dist), 0, false);
    auto ra = again.compute_gradients();
    auto rb = dist->compute_gradients();
    compare_records(f, *dist, "resumed step 3", step_record(again, ra), step_record(*dist, rb), 0, false);
  }
}

struct Options {
  uint64_t seed = 20261205;
  int64_t cases = 40, first = 0;
  bool verbose = false;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&] {
      SY_CHECK_AS(UsageError, i + 1 < argc, a, ": needs a value");
      return std::string(argv[++i]);
    };
    if (a == "--seed") o.seed = std::stoull(value());
    else if (a == "--cases") o.cases = std::stoll(value());
    else if (a == "--first") o.first = std::stoll(value());
    else if (a == "--verbose") o.verbose = true;
    else throw UsageError("unknown argument " + a + " (usage: config_space_test [--seed S] [--cases N] [--first I] [--verbose])");
  }
  return o;
}

int run(int argc, char** argv) {
  const auto options = parse(argc, argv);
  core::set_log_level(core::LogLevel::kWarn);
  auto world = parallel::make_mpi_world(600.0);
  const int rank = world->rank();
  auto self = world->split(rank, 0);
  std::string root;
  if (rank == 0) {
    char tmpl[] = "/tmp/config_space.XXXXXX";
    SY_CHECK_AS(IoError, ::mkdtemp(tmpl) != nullptr, "cannot create a temporary directory");
    root = tmpl;
  }
  root = parallel::broadcast_bytes(*world, root, 0);
  int64_t failed = 0, compared = 0, near_ties = 0;
  for (int64_t i = options.first; i < options.first + options.cases; ++i) {
    const Case c = draw_case(options.seed, i, world->size());
    if (options.verbose && rank == 0) std::fprintf(stderr, "%s\n", c.describe().c_str());
    auto sub = world->split(rank < c.world ? 0 : 1, rank);
    const std::string dir = root + "/case_" + std::to_string(i);
    const auto run_case = [&](const Case& run) {
      Failures f;
      try {
        if (rank < run.world) layer_check(run, sub, f);
        train_check(run, world, sub, self, dir + (run.config.train.precision == core::Precision::kFp64 ? "_fp64" : ""), f);
      } catch (const std::exception& e) {
        std::string what = e.what();
        if (!options.verbose) what = what.substr(0, what.find('\n'));
        std::fprintf(stderr, "CRASH [rank %d] %s\n  %s\n", rank, what.c_str(), run.describe().c_str());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      std::string lines;
      for (const auto& l : f.lines) lines += "[rank " + std::to_string(rank) + "] " + l + "\n";
      std::string report;
      for (const auto& a : parallel::all_gather_bytes(*world, lines)) report += a;
      return report;
    };
    compared += c.invariant();
    auto report = run_case(c);
    if (!report.empty()) {
      // A second opinion in fp64: rounding at the 1e-7 level can flip a near-tie routing decision
      // (expert choice's C-th token, a top-p threshold) between two correct runs, at the 1e-16
      // level it practically cannot; a logic error fails in both.
      auto fp64 = c;
      fp64.config.train.precision = core::Precision::kFp64;
      const auto second = run_case(fp64);
      if (second.empty()) {
        ++near_ties;
        if (rank == 0 && options.verbose) std::fprintf(stderr, "NEAR TIE (passes in fp64) %s\n%s", c.describe().c_str(), report.c_str());
        report.clear();
      } else {
        report += "and in fp64:\n" + second;
      }
    }
    if (!report.empty()) {
      ++failed;
      if (rank == 0) std::fprintf(stderr, "FAIL %s\n%s", c.describe().c_str(), report.c_str());
    }
    if (rank == 0) {
      core::remove_tree(dir);
      core::remove_tree(dir + "_fp64");
    }
  }
  if (rank == 0) {
    core::remove_tree(root);
    std::printf("config space: seed %llu, cases %lld-%lld: %lld failed, %lld compared with the single-process model "
                "(%lld of them equal only in fp64: a near tie in fp32), %lld checked for crashes, finiteness and slot "
                "counts only\n",
                static_cast<unsigned long long>(options.seed), static_cast<long long>(options.first),
                static_cast<long long>(options.first + options.cases - 1), static_cast<long long>(failed),
                static_cast<long long>(compared), static_cast<long long>(near_ties),
                static_cast<long long>(options.cases - compared));
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace
}  // namespace switchyard::fuzz

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int code = 1;
  try {
    code = switchyard::fuzz::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  MPI_Finalize();
  return code;
}
