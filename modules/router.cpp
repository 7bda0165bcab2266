// Routers by family (core/router_traits.h), their fp32 logits, and capacity.
#include "modules/router.h"


#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/router_traits.h"
#include "losses/routing_losses.h"
#include "modules/counter_rng.h"
#include "modules/moe_kernels.h"
#include "runtime/torch_version.h"

namespace switchyard::modules {
namespace {

namespace F = torch::nn::functional;

torch::Tensor normalize_rows(const torch::Tensor& x) { return F::normalize(x, F::NormalizeFuncOptions().dim(-1)); }

/// Renormalizes gates [T, k] over each row's used slots.
torch::Tensor renormalize(const torch::Tensor& gates) { return gates / gates.sum(-1, true).clamp_min(1e-20); }

#if SY_TORCH_AT_LEAST(2, 9)
/// An fp32 operand as bf16 terms that sum to it to 16 of fp32's 24 mantissa bits (relative error
/// ~2^-17): {hi, lo}; a bf16 operand is one term.
std::vector<torch::Tensor> bf16_terms(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kBFloat16) return {t};
  const auto hi = t.to(torch::kBFloat16);
  return {hi, (t - hi.to(t.scalar_type())).to(torch::kBFloat16)};
}

/// fp32 router logits x w^T for bf16 activations on CUDA without an fp32 copy of x: bf16 GEMMs that
/// accumulate in fp32 and write fp32 (products of bf16 values are exact in fp32). An fp32 weight,
/// and the fp32 gradient of the logits, enter as their bf16 terms concatenated along the GEMM's K
/// (the lo x lo product, ~2^-16 relative, dropped). Measured on mixtral_like: the fp32 copy of x and
/// the fp32 GEMMs took ~0.8 ms of a 56 ms forward+backward.
class RouterLogitsFn : public torch::autograd::Function<RouterLogitsFn> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w) {
    ctx->save_for_backward({x, w});
    const auto terms = bf16_terms(w);
    const int64_t E = w.size(0);
    const auto w_terms = terms.size() == 1 ? terms[0] : torch::cat(terms, 0);
    const auto both = at::mm(x, w_terms.t(), torch::kFloat32);  // [T, terms * E]
    return terms.size() == 1 ? both : both.narrow(1, 0, E) + both.narrow(1, E, E);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const int64_t E = w.size(0);
    const auto g = bf16_terms(grads[0].to(torch::kFloat32));  // {hi, lo}
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      // dx = g w: g_hi w_hi + g_lo w_hi (+ g_hi w_lo), one GEMM over the concatenated terms, in bf16.
      const auto w_terms = bf16_terms(w);
      std::vector<torch::Tensor> left{g[0], g[1]}, right{w_terms[0], w_terms[0]};
      if (w_terms.size() == 2) {
        left.push_back(g[0]);
        right.push_back(w_terms[1]);
      }
      dx = torch::cat(left, 1).mm(torch::cat(right, 0));
    }
    if (ctx->needs_input_grad(1)) {
      // dw = g^T x: (g_hi + g_lo)^T x in fp32.
      const auto both = at::mm(torch::cat(g, 1).t(), x, torch::kFloat32);  // [2E, d]
      dw = (both.narrow(0, 0, E) + both.narrow(0, E, E)).to(w.scalar_type());
    }
    return {dx, dw};
  }
};
#endif

}  // namespace

torch::Tensor router_logits(const torch::Tensor& x, const torch::Tensor& w) {
#if SY_TORCH_AT_LEAST(2, 9)
  if (x.is_cuda() && x.scalar_type() == torch::kBFloat16 && x.size(1) % 8 == 0 &&
      (w.scalar_type() == torch::kBFloat16 || w.scalar_type() == torch::kFloat32)) {
    return RouterLogitsFn::apply(x.contiguous(), w.contiguous());
  }
#endif
  const auto x32 = losses::at_least_fp32(x);
  return x32.matmul(w.to(x32.scalar_type()).t());
}

RouterImpl::RouterImpl(const core::MoEConfig& config, int64_t d_model, double init_std, uint64_t noise_key)
    : config_(config), d_model_(d_model), num_choices_(config.num_experts + config.null_experts), noise_key_(noise_key) {
  using core::RouterKind;
  const auto init = [&](std::vector<int64_t> shape) { return torch::randn(shape) * init_std; };
  switch (config.router.kind) {
    case RouterKind::kTopK:
    case RouterKind::kExpertChoice:
    case RouterKind::kTopP:
      weight_ = register_parameter("weight", init({num_choices_, d_model}));
      break;
    case RouterKind::kNoisyTopK:
      weight_ = register_parameter("weight", init({num_choices_, d_model}));
      noise_weight_ = register_parameter("noise_weight", init({num_choices_, d_model}));
      break;
    case RouterKind::kSigmoidBias:
      weight_ = register_parameter("weight", init({num_choices_, d_model}));
      bias_ = register_buffer("bias", torch::zeros({num_choices_}));
      break;
    case RouterKind::kCosine: {
      const int64_t dim = config.router.cosine_dim > 0 ? config.router.cosine_dim : d_model;
      if (config.router.cosine_dim > 0) projection_ = register_parameter("projection", init({dim, d_model}));
      prototypes_ = register_parameter("prototypes", init({num_choices_, dim}));
      break;
    }
    case RouterKind::kBilevel: {
      const int64_t groups = config.router.groups;
      node_weight_ = register_parameter("node_weight", init({groups, d_model}));
      local_weight_ = register_parameter("local_weight", init({config.num_experts / groups, d_model}));
      break;
    }
    case RouterKind::kGrap:
      SY_ASSERT(d_model % config.num_experts == 0, "Config::validate admits grap only where num_experts divides d_model");
      eps_ = register_parameter("eps", torch::zeros({num_choices_}));
      break;
    case RouterKind::kHash:
    case RouterKind::kRandom:
      break;
  }
}

Routing RouterImpl::top_k_of(const torch::Tensor& logits, int64_t k) const {
  Routing r;
  r.z_logits = {logits};
  // On CUDA one kernel where softmax, topk and renormalize take ~8; elsewhere those ops.
  const auto out = kernels::softmax_topk(logits, k, config_.router.normalize_topk);
  r.gates = out[0];
  r.probs = out[1];
  r.expert_idx = out[2];
  return r;
}

torch::Tensor RouterImpl::token_counters(const torch::Tensor& x, const TokenInfo& tokens) const {
  const int64_t num_tokens = x.size(0);
  if (!tokens.counters.defined()) return torch::arange(num_tokens, torch::dtype(torch::kInt64).device(x.device()));
  SY_CHECK(tokens.counters.numel() == num_tokens, "router: ", tokens.counters.numel(), " token counters for ", num_tokens,
           " tokens");
  return tokens.counters.reshape({-1}).to(x.device(), torch::kInt64);
}

Routing RouterImpl::forward(const torch::Tensor& x, const TokenInfo& tokens) {
  // Router math stays in fp32 under bf16 autocast: autocast would run these matmuls in bf16.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  SY_CHECK(x.dim() == 2 && x.size(1) == d_model_, "router: expected x [T, ", d_model_, "], got ", x.sizes());
  Routing r;
  switch (core::router_traits(config_.router.kind).family) {
    case core::RouterFamily::kSoftmaxTopK: r = route_softmax_topk(x, tokens); break;
    case core::RouterFamily::kSigmoidBias: r = route_sigmoid_bias(x); break;
    case core::RouterFamily::kExpertChoice: r = route_expert_choice(x); break;
    case core::RouterFamily::kTopP: r = route_top_p(x); break;
    case core::RouterFamily::kFixed: r = route_fixed(x, tokens); break;
    case core::RouterFamily::kBilevel: r = route_bilevel(x); break;
  }
  r.learned = core::router_traits(config_.router.kind).learned;
  return r;
}

Routing RouterImpl::route_softmax_topk(const torch::Tensor& x, const TokenInfo& tokens) {
  const auto f32 = [&](const torch::Tensor& t) { return t.to(losses::at_least_fp32_type(x)); };
  switch (config_.router.kind) {
    case core::RouterKind::kNoisyTopK: {
      auto logits = router_logits(x, weight_);
      if (is_training()) {
        const auto noise = counter_normal(noise_key_, token_counters(x, tokens), num_choices_).to(logits.scalar_type());
        logits = logits + F::softplus(router_logits(x, noise_weight_)) * noise;
      }
      return top_k_of(logits, config_.top_k);
    }
    case core::RouterKind::kCosine: {
      const auto x32 = losses::at_least_fp32(x);
      const auto h = projection_.defined() ? x32.matmul(f32(projection_).t()) : x32;
      const auto logits = config_.router.cosine_scale * normalize_rows(h).matmul(normalize_rows(f32(prototypes_)).t());
      Routing r = top_k_of(logits, config_.top_k);
      r.projected = h;
      return r;
    }
    case core::RouterKind::kGrap: {
      // Fixed orthogonal gate: w_i = E/d on channels [i d/E, (i+1) d/E), so w_i . x is the mean of
      // that channel block. Only eps_i is learned.
      const int64_t E = config_.num_experts, block = d_model_ / E;
      const auto means = losses::at_least_fp32(x).reshape({x.size(0), E, block}).mean(-1);
      return top_k_of(F::relu(means + f32(eps_).narrow(0, 0, E)), config_.top_k);
    }
    default:
      return top_k_of(router_logits(x, weight_), config_.top_k);
  }
}

Routing RouterImpl::route_sigmoid_bias(const torch::Tensor& x) {
  Routing r;
  const auto logits = router_logits(x, weight_);
  const auto scores = torch::sigmoid(logits);
  const auto selected = (scores.detach() + bias_.to(scores.device())).topk(config_.top_k, -1);
  r.expert_idx = std::get<1>(selected);
  r.gates = renormalize(scores.gather(1, r.expert_idx));
  r.probs = scores / scores.sum(-1, true);
  r.z_logits = {logits};
  return r;
}

Routing RouterImpl::route_expert_choice(const torch::Tensor& x) {
  Routing r;
  const int64_t num_tokens = x.size(0);
  const auto logits = router_logits(x, weight_);
  r.probs = torch::softmax(logits, -1);
  r.z_logits = {logits};
  const int64_t capacity =
      std::min<int64_t>(num_tokens, expert_capacity(config_.capacity_factor, config_.top_k, num_tokens, num_choices_));
  // Each expert takes its top-capacity tokens; a token may end up with 0..E experts.
  const auto chosen = std::get<1>(r.probs.detach().t().topk(capacity, -1));  // [E, C] token indices
  auto mask = torch::zeros({num_choices_, num_tokens}, torch::dtype(torch::kBool).device(x.device()));
  mask.scatter_(1, chosen, true);
  mask = mask.t();  // [T, E]
  const auto expert_ids = torch::arange(num_choices_, torch::dtype(torch::kInt64).device(x.device()))
                              .unsqueeze(0)
                              .expand({num_tokens, num_choices_});
  r.expert_idx = torch::where(mask, expert_ids, torch::full_like(expert_ids, -1));
  r.gates = r.probs * mask.to(r.probs.scalar_type());
  return r;
}

Routing RouterImpl::route_top_p(const torch::Tensor& x) {
  Routing r;
  const auto logits = router_logits(x, weight_);
  r.probs = torch::softmax(logits, -1);
  r.z_logits = {logits};
  const int64_t k_max = config_.router.k_max;
  auto [sorted_p, sorted_idx] = r.probs.sort(-1, /*descending=*/true);
  sorted_p = sorted_p.narrow(1, 0, k_max);
  sorted_idx = sorted_idx.narrow(1, 0, k_max);
  // Keep slot j while the mass before it is below the threshold: the smallest set reaching it.
  const auto mass_before = sorted_p.detach().cumsum(-1) - sorted_p.detach();
  const auto keep = mass_before < config_.router.top_p_threshold;
  r.expert_idx = torch::where(keep, sorted_idx, torch::full_like(sorted_idx, -1));
  const auto gates = sorted_p * keep.to(sorted_p.scalar_type());
  r.gates = config_.router.normalize_topk ? renormalize(gates) : gates;
  return r;
}

Routing RouterImpl::route_fixed(const torch::Tensor& x, const TokenInfo& tokens) {
  const int64_t num_tokens = x.size(0), k = config_.top_k;
  const auto float_options = x.options().dtype(losses::at_least_fp32_type(x));
  Routing r;
  if (config_.router.kind == core::RouterKind::kHash) {
    SY_CHECK(tokens.ids.defined() && tokens.ids.numel() == num_tokens,
             "router: the hash router needs the token ids of its ", num_tokens, " tokens");
    // Knuth's multiplicative hash, high bits: deterministic in the token id alone.
    const auto ids = tokens.ids.to(x.device(), torch::kInt64).reshape({num_tokens, 1});
    const auto h = (ids * int64_t{2654435761}).bitwise_and(int64_t{0xffffffff}).div(int64_t{256}, "floor");
    const auto offsets = torch::arange(k, ids.options()).unsqueeze(0);
    r.expert_idx = (h + offsets).remainder(config_.num_experts);
  } else {
    // Uniform per (token counter, expert), 53 random bits: ties have probability ~E^2 2^-54.
    const auto noise = counter_uniform(noise_key_, token_counters(x, tokens), config_.num_experts);
    r.expert_idx = std::get<1>(noise.topk(k, -1));
  }
  r.gates = torch::full({num_tokens, k}, 1.0 / k, float_options);
  r.probs = torch::zeros({num_tokens, num_choices_}, float_options).scatter_add(1, r.expert_idx, r.gates);
  return r;
}

Routing RouterImpl::route_bilevel(const torch::Tensor& x) {
  Routing r;
  const int64_t k = config_.top_k, per_group = config_.num_experts / config_.router.groups;
  const auto node_logits = router_logits(x, node_weight_);
  const auto local_logits = router_logits(x, local_weight_);
  r.node_probs = torch::softmax(node_logits, -1);
  r.local_probs = torch::softmax(local_logits, -1);
  auto [node_p, node_idx] = r.node_probs.topk(1, -1);  // [T, 1]
  auto [local_p, local_idx] = r.local_probs.topk(k, -1);
  if (config_.router.normalize_topk && k > 1) local_p = renormalize(local_p);
  r.node_idx = node_idx;
  r.local_idx = local_idx;
  r.expert_idx = node_idx * per_group + local_idx;
  r.gates = node_p * local_p;
  // The joint distribution over all E experts: p(group) * p(position in group).
  r.probs = (r.node_probs.unsqueeze(2) * r.local_probs.unsqueeze(1)).reshape({x.size(0), config_.num_experts});
  r.z_logits = {node_logits, local_logits};
  return r;
}

void RouterImpl::update_bias(const torch::Tensor& global_load) {
  SY_CHECK(config_.router.kind == core::RouterKind::kSigmoidBias, "update_bias: only the sigmoid_bias router has a bias");
  SY_CHECK(global_load.numel() == num_choices_, "update_bias: expected ", num_choices_, " loads, got ", global_load.numel());
  torch::NoGradGuard no_grad;
  const auto load = global_load.to(bias_.device(), torch::kFloat32);
  bias_.add_(config_.router.bias_update_rate * torch::sign(load.mean() - load));
}

int64_t expert_capacity(double capacity_factor, int64_t top_k, int64_t num_tokens, int64_t num_experts) {
  if (capacity_factor <= 0) return -1;
  return static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(top_k * num_tokens) /
                                        static_cast<double>(num_experts)));
}

torch::Tensor apply_capacity(Routing& routing, int64_t capacity, int64_t num_experts, core::DropPolicy policy) {
  if (capacity < 0) return torch::zeros({}, torch::dtype(torch::kInt64).device(routing.expert_idx.device()));
  const auto idx = routing.expert_idx.reshape({-1});
  const int64_t num_slots = idx.numel();
  const auto device = idx.device();
  const auto routed = idx.ge(0).logical_and(idx.lt(num_experts));
  // Sort slots by (expert, priority): priority is -gate or the slot position; unrouted slots last.
  const auto expert_key = torch::where(routed, idx, torch::full_like(idx, num_experts));
  torch::Tensor order;
  if (policy == core::DropPolicy::kProbability) {
    order = std::get<1>(routing.gates.detach().reshape({-1}).sort(/*stable=*/true, 0, /*descending=*/true));
  } else {
    order = torch::arange(num_slots, torch::dtype(torch::kInt64).device(device));
  }
  const auto by_expert = std::get<1>(expert_key.index_select(0, order).sort(/*stable=*/true, 0, false));
  order = order.index_select(0, by_expert);
  const auto sorted_expert = expert_key.index_select(0, order);
  const auto counts = torch::bincount(sorted_expert, {}, num_experts + 1);
  const auto starts = counts.cumsum(0) - counts;
  const auto rank_in_expert = torch::arange(num_slots, order.options()) - starts.index_select(0, sorted_expert);
  const auto drop_sorted = rank_in_expert.ge(capacity).logical_and(sorted_expert.lt(num_experts));
  auto drop = torch::zeros({num_slots}, torch::dtype(torch::kBool).device(device));
  drop.index_put_({order}, drop_sorted);
  drop = drop.reshape(routing.expert_idx.sizes());
  routing.expert_idx = routing.expert_idx.masked_fill(drop, -1);
  routing.gates = routing.gates.masked_fill(drop, 0.0);
  return drop.sum();
}

}  // namespace switchyard::modules
