// Drawing of the config-space cases (see config_space_cases.h).
#include "tests/fuzz/config_space_cases.h"

#include <algorithm>
#include <sstream>

namespace switchyard::fuzz {
namespace {

using core::RouterKind;

class Draw {
 public:
  explicit Draw(uint64_t seed) : rng_(seed) {}
  int64_t between(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  template <class T>
  T pick(const std::vector<T>& options) { return options[static_cast<size_t>(between(0, static_cast<int64_t>(options.size()) - 1))]; }
  std::mt19937_64& rng() { return rng_; }

 private:
  std::mt19937_64 rng_;
};

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t i = 1; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

/// A balanced random placement: a shuffled contiguous one.
std::vector<int64_t> random_plan(Draw& draw, int64_t experts, int64_t ep) {
  std::vector<int64_t> owner(experts);
  for (int64_t e = 0; e < experts; ++e) owner[e] = e / (experts / ep);
  std::shuffle(owner.begin(), owner.end(), draw.rng());
  return owner;
}

}  // namespace

bool Case::invariant() const {
  // The locality target is this rank's node: where an EP group spans nodes, ranks target different
  // experts, so the loss (and its gradient) depends on the layout by design.
  const auto& p = config.parallel;
  const int64_t per_node = p.ranks_per_node > 0 ? p.ranks_per_node : world;
  const bool spans_nodes = p.expert_parallel > per_node;
  return !(config.losses.locality > 0 && spans_nodes);
}

bool Case::per_token_routing() const {
  const auto& moe = config.model.moe;
  return moe.capacity_factor <= 0 && moe.router.kind != RouterKind::kExpertChoice;
}

bool Case::micro_batch_invariant() const {
  const auto& l = config.losses;
  const auto& moe = config.model.moe;
  const bool balance = moe.router.kind == RouterKind::kBilevel
                           ? (l.load_balance > 0 || l.node_balance > 0)
                           : (l.load_balance > 0 && l.load_balance_scope == core::BalanceScope::kMicroBatch &&
                              moe.router.kind != RouterKind::kExpertChoice);
  return per_token_routing() && l.contrastive == 0 && l.locality == 0 && !balance;
}

std::string Case::describe() const {
  const auto& c = config;
  const auto& m = c.model;
  const auto& moe = m.moe;
  std::ostringstream o;
  o << "seed " << seed << " case " << index << ": ranks " << world << " --set model.d_model=" << m.d_model
    << " --set model.n_layers=" << m.n_layers << " --set model.n_heads=" << m.n_heads << " --set model.seq_len=" << m.seq_len
    << " --set model.vocab_size=" << m.vocab_size << " --set model.n_kv_heads=" << m.n_kv_heads
    << " --set model.moe.every=" << moe.every
    << " --set model.moe.num_experts=" << moe.num_experts << " --set model.moe.top_k=" << moe.top_k
    << " --set model.moe.ffn_hidden=" << moe.ffn_hidden << " --set model.moe.expert_kind=" << core::enum_name(moe.expert_kind)
    << " --set model.moe.shared_experts=" << moe.shared_experts << " --set model.moe.null_experts=" << moe.null_experts
    << " --set model.moe.null_expert_kind=" << core::enum_name(moe.null_expert_kind)
    << " --set model.moe.capacity_factor=" << moe.capacity_factor << " --set model.moe.drop_policy=" << core::enum_name(moe.drop_policy)
    << " --set model.moe.router.kind=" << core::enum_name(moe.router.kind)
    << " --set model.moe.router.normalize_topk=" << (moe.router.normalize_topk ? "true" : "false")
    << " --set model.moe.router.k_max=" << moe.router.k_max << " --set model.moe.router.groups=" << moe.router.groups
    << " --set model.moe.router.cosine_dim=" << moe.router.cosine_dim
    << " --set losses.load_balance=" << c.losses.load_balance
    << " --set losses.load_balance_scope=" << core::enum_name(c.losses.load_balance_scope)
    << " --set losses.seq_balance=" << c.losses.seq_balance << " --set losses.z_loss=" << c.losses.z_loss
    << " --set losses.contrastive=" << c.losses.contrastive << " --set losses.locality=" << c.losses.locality
    << " --set losses.node_balance=" << c.losses.node_balance
    << " --set parallel.expert_parallel=" << c.parallel.expert_parallel
    << " --set parallel.dispatcher=" << core::enum_name(c.parallel.dispatcher)
    << " --set parallel.ranks_per_node=" << c.parallel.ranks_per_node
    << " --set parallel.overlap_chunks=" << c.parallel.overlap_chunks
    << " --set train.global_batch=" << c.train.global_batch << " --set train.micro_batch=" << c.train.micro_batch
    << " --set train.seed=" << c.train.seed << " --set train.recompute=" << core::enum_name(c.train.recompute)
    << (plan.empty() ? "" : " (random placement plan)")
    << "; layer tokens per rank";
  for (auto t : layer_tokens) o << " " << t;
  o << "; reference micro_batch " << reference_micro_batch;
  return o.str();
}

// Long on purpose: every dimension of the config space is drawn here, in one order (the order fixes
// which case a seed gives), and the rules that tie dimensions together sit beside the draws they tie.
Case draw_case(uint64_t seed, int64_t index, int max_world) {
  Draw draw(seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(index) * 0xbf58476d1ce4e5b9ULL + 1);
  Case c;
  c.seed = seed;
  c.index = index;
  auto& cfg = c.config;
  auto& model = cfg.model;
  auto& moe = model.moe;

  // Ranks, expert parallelism, nodes.
  std::vector<int> worlds;
  for (int w = 1; w <= max_world; ++w) worlds.push_back(w);
  c.world = draw.chance(0.5) ? max_world : draw.pick(worlds);
  const int64_t ep = draw.pick(divisors(c.world));
  cfg.parallel.expert_parallel = ep;
  cfg.parallel.ranks_per_node = draw.chance(0.3) ? 0 : draw.pick(divisors(c.world));
  const int64_t per_node = cfg.parallel.ranks_per_node > 0 ? cfg.parallel.ranks_per_node : c.world;
  const bool aligned = ep % per_node == 0 || per_node % ep == 0;
  cfg.parallel.dispatcher = aligned && draw.chance(0.5) ? core::DispatcherKind::kHierarchical : core::DispatcherKind::kFlat;
  cfg.parallel.overlap_chunks = draw.chance(0.6) ? 1 : draw.between(2, 4);
  cfg.parallel.timeout_s = 120;

  // Router and experts.
  moe.router.kind = draw.pick(std::vector<RouterKind>{RouterKind::kTopK, RouterKind::kSigmoidBias, RouterKind::kNoisyTopK,
                                                      RouterKind::kExpertChoice, RouterKind::kTopP, RouterKind::kHash,
                                                      RouterKind::kRandom, RouterKind::kCosine, RouterKind::kBilevel,
                                                      RouterKind::kGrap});
  model.d_model = draw.pick(std::vector<int64_t>{8, 16, 24, 32});
  if (moe.router.kind == RouterKind::kGrap) {
    // The fixed gate needs num_experts | d_model; experts split over the EP group.
    std::vector<int64_t> options;
    for (int64_t e : divisors(model.d_model))
      if (e % ep == 0 && e <= 32) options.push_back(e);
    if (options.empty()) {
      model.d_model = 8 * ep;
      options = {ep};
    }
    moe.num_experts = draw.pick(options);
  } else {
    const int64_t per_rank = draw.chance(0.3) ? 1 : draw.between(1, std::max<int64_t>(1, 32 / ep));
    moe.num_experts = ep * per_rank;
  }
  const int64_t E = moe.num_experts;
  moe.top_k = draw.between(1, std::min<int64_t>(4, E));
  if (moe.router.kind == RouterKind::kBilevel) {
    moe.router.groups = draw.pick(divisors(E));
    moe.top_k = draw.between(1, std::min<int64_t>(4, E / moe.router.groups));
  }
  if (moe.router.kind == RouterKind::kTopP) {
    moe.router.k_max = draw.between(1, std::min<int64_t>(4, E));
    moe.router.top_p_threshold = draw.pick(std::vector<double>{0.2, 0.4, 0.7, 0.95});
  }
  if (moe.router.kind == RouterKind::kCosine) moe.router.cosine_dim = draw.chance(0.5) ? 0 : 4;
  moe.router.normalize_topk = draw.chance(0.7);
  moe.ffn_hidden = draw.pick(std::vector<int64_t>{4, 8, 12});
  moe.expert_kind = draw.chance(0.7) ? core::ExpertKind::kSwiGLU : core::ExpertKind::kGeLU;
  moe.shared_experts = draw.chance(0.7) ? 0 : draw.between(1, 2);
  const bool null_ok = moe.router.kind == RouterKind::kTopK || moe.router.kind == RouterKind::kNoisyTopK ||
                       moe.router.kind == RouterKind::kSigmoidBias;
  if (null_ok && draw.chance(0.3)) {
    moe.null_experts = draw.between(1, 2);
    moe.null_expert_kind = draw.pick(std::vector<core::NullExpertKind>{core::NullExpertKind::kZero, core::NullExpertKind::kCopy,
                                                                       core::NullExpertKind::kConstant});
  }
  if (moe.router.kind == RouterKind::kExpertChoice || draw.chance(0.35)) {
    moe.capacity_factor = draw.pick(std::vector<double>{0.5, 1.0, 1.25, 2.0});
    moe.drop_policy = draw.chance(0.5) ? core::DropPolicy::kProbability : core::DropPolicy::kPosition;
  }

  // The rest of the model: tiny, so a case runs in a fraction of a second.
  model.n_layers = draw.between(1, 3);
  moe.every = draw.between(1, model.n_layers);
  std::vector<int64_t> heads;
  for (int64_t h : divisors(model.d_model))
    if ((model.d_model / h) % 2 == 0) heads.push_back(h);
  model.n_heads = draw.pick(heads);
  model.n_kv_heads = draw.chance(0.7) ? 0 : draw.pick(divisors(model.n_heads));
  model.seq_len = draw.between(3, 10);
  model.vocab_size = 256;  // the synthetic corpus is bytes
  model.dense_ffn_hidden = 16;
  model.init_std = 0.2;

  // Losses (each on or off), both balance scopes.
  auto& losses = cfg.losses;
  losses.load_balance = draw.pick(std::vector<double>{0.0, 0.01, 0.1});
  losses.load_balance_scope = moe.router.kind != RouterKind::kBilevel && draw.chance(0.5) ? core::BalanceScope::kGlobalBatch
                                                                                       : core::BalanceScope::kMicroBatch;
  losses.seq_balance = draw.chance(0.3) ? 0.01 : 0.0;
  losses.z_loss = draw.chance(0.5) ? 0.001 : 0.0;
  losses.contrastive = moe.router.kind == RouterKind::kCosine && draw.chance(0.6) ? 0.05 : 0.0;
  losses.locality = draw.chance(0.25) ? 0.05 : 0.0;
  losses.node_balance = moe.router.kind == RouterKind::kBilevel ? draw.pick(std::vector<double>{0.0, 0.01}) : 0.01;

  // Batches: micro-batches per rank and step, and the reference's micro_batch.
  auto& train = cfg.train;
  train.micro_batch = draw.between(1, 3);
  train.global_batch = c.world * train.micro_batch * draw.between(1, 3);
  train.seed = draw.between(1, 1000000);
  train.lr = 1e-2;
  // AdamW turns a gradient that is zero in exact arithmetic but rounding noise in fp32 (a gate
  // renormalized over one expert, say) into a full-size step: an epsilon well above that noise keeps
  // the two runs' updates as close as their gradients.
  train.adam_eps = 1e-4;
  train.warmup_steps = 0;
  train.grad_clip = draw.chance(0.5) ? 1.0 : 0.0;
  // The distributed run recomputes activations in the backward (the reference never does).
  train.recompute = draw.pick(std::vector<core::RecomputeKind>{core::RecomputeKind::kNone, core::RecomputeKind::kNone,
                                                                core::RecomputeKind::kMoE, core::RecomputeKind::kFull});
  train.log_every = 0;
  train.eval_every = 0;
  train.checkpoint_every = 0;
  train.eval_batches = 1;
  train.keep_checkpoints = 4;
  cfg.data.synthetic_tokens = 8192;
  c.reference_micro_batch = train.micro_batch;

  // A random placement plan half of the time (EP > 1).
  if (ep > 1 && draw.chance(0.5)) {
    for (int64_t l = 0; l < cfg.num_moe_layers(); ++l) c.plan.push_back(random_plan(draw, E, ep));
  }
  // Layer level: uneven tokens, 0 and 1 included.
  for (int r = 0; r < c.world; ++r) {
    const double u = std::uniform_real_distribution<double>(0, 1)(draw.rng());
    c.layer_tokens.push_back(u < 0.15 ? 0 : u < 0.3 ? 1 : draw.between(2, 24));
  }
  if (c.micro_batch_invariant()) {
    std::vector<int64_t> options;
    for (int64_t m : divisors(train.global_batch))
      if (m != train.micro_batch) options.push_back(m);
    if (!options.empty() && draw.chance(0.6)) c.reference_micro_batch = draw.pick(options);
  }
  return c;
}

}  // namespace switchyard::fuzz
