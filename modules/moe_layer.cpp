// MoE layer forward: routing, capacity, exchange, experts, combine, losses and statistics.
#include "modules/moe_layer.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/router_traits.h"
#include "losses/routing_losses.h"
#include "modules/counter_rng.h"
#include "modules/recompute.h"
#include "modules/side_stream.h"
#include "runtime/autocast.h"

namespace switchyard::modules {
namespace {

/// Stream index of the routers' noise draws (keys differ by layer and by this stream).
constexpr uint64_t kRoutingNoiseStream = 0x726f757465ULL;

}  // namespace

bool every_slot_routed(const core::MoEConfig& moe) {
  return moe.capacity_factor <= 0 && moe.null_experts == 0 && core::router_traits(moe.router.kind).every_slot_an_expert;
}

int64_t routing_slots(const core::MoEConfig& moe) {
  switch (core::router_traits(moe.router.kind).slots) {
    case core::SlotWidth::kKMax: return moe.router.k_max;
    case core::SlotWidth::kAllChoices: return moe.num_experts + moe.null_experts;
    case core::SlotWidth::kTopK: break;
  }
  return moe.top_k;
}

torch::Tensor MoEStats::routed_experts(int64_t num_experts) const {
  return expert_idx.masked_fill(expert_idx.ge(num_experts), -1).to(torch::kCPU, torch::kInt32);
}

double MoEStats::dropped_frac() const {
  const auto routed = routed_slots.item<int64_t>();
  return routed > 0 ? static_cast<double>(dropped_slots.item<int64_t>()) / static_cast<double>(routed) : 0.0;
}

MoELayerImpl::MoELayerImpl(const core::ModelConfig& model, const core::LossesConfig& losses, int64_t layer_idx,
                           uint64_t seed, std::shared_ptr<TokenDispatcher> dispatcher)
    : config_(model.moe), loss_config_(losses), d_model_(model.d_model), dispatcher_(std::move(dispatcher)) {
  if (!dispatcher_) dispatcher_ = std::make_shared<LocalDispatcher>(config_.num_experts, every_slot_routed(config_));
  router = register_module("router", Router(config_, model.d_model, model.init_std,
                                            counter_key(seed, static_cast<uint64_t>(layer_idx), kRoutingNoiseStream)));
  experts = register_module("experts", Experts(dispatcher_->local_expert_ids(), model.d_model, config_.ffn_hidden,
                                               config_.expert_kind, model.init_std,
                                               seed + 7777ULL * static_cast<uint64_t>(layer_idx + 1)));
  if (config_.shared_experts > 0) {
    // K_s shared experts of width f summed equal one MLP of width K_s * f.
    shared = register_module("shared", Mlp(model.d_model, config_.shared_experts * config_.ffn_hidden,
                                           config_.expert_kind, model.init_std));
  }
  if (config_.null_experts > 0 && config_.null_expert_kind == core::NullExpertKind::kConstant) {
    null_constants = register_parameter("null_constants", torch::randn({config_.null_experts, model.d_model}) * model.init_std);
  }
}

torch::Tensor MoELayerImpl::run_experts(const Dispatched& d) {
  if (!recompute_experts_) return experts->forward(d.tokens, d.tokens_per_expert, d.expert_ends);
  const auto counts = d.tokens_per_expert, ends = d.expert_ends;
  Experts mlp = experts;
  return recompute_in_backward([mlp, counts, ends](const torch::Tensor& tokens) mutable -> torch::autograd::variable_list {
    return {mlp->forward(tokens, counts, ends)};
  }, d.tokens)[0];
}

torch::Tensor MoELayerImpl::routed_experts(const torch::Tensor& x, const torch::Tensor& expert_idx,
                                           const torch::Tensor& gates) {
  const Dispatched dispatched = dispatcher_->dispatch(x, expert_idx, gates);
  const auto expert_out = run_experts(dispatched);
  return dispatcher_->combine_weighted(expert_out, dispatched.slot_gates, dispatched);
}

torch::Tensor MoELayerImpl::routed_experts_overlapped(const torch::Tensor& x, const torch::Tensor& expert_idx,
                                                      const torch::Tensor& gates) {
  // Host order, chunk c: dispatch(c) on the side stream (its host waits fall while the GPU runs
  // experts(c - 1)), experts(c) on the main stream, then combine(c - 1) on the side stream after
  // experts(c - 1) (overlapping experts(c)). Every rank issues the collectives in this same order.
  // The same number of chunks on every rank whatever its token count (some may be empty): each chunk
  // is a collective exchange, and every rank of the group must issue the same ones.
  const int64_t T = x.size(0), chunks = overlap_chunks_;
  SideStream side(x.device());
  side.side_waits(side.mark_main());  // the router's outputs
  for (const auto& t : {x, expert_idx, gates}) side.used_on_side(t);
  std::vector<Dispatched> dispatched(chunks);
  std::vector<torch::Tensor> expert_out(chunks), y(chunks);
  std::vector<SideStream::Marker> experts_done(chunks);
  auto combine = [&](int64_t c) {
    side.side_waits(experts_done[c]);
    side.used_on_side(expert_out[c]);
    side.run_on_side([&] { y[c] = dispatcher_->combine_weighted(expert_out[c], dispatched[c].slot_gates, dispatched[c]); });
    side.used_on_main(y[c]);
  };
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * T / chunks, n = (c + 1) * T / chunks - begin;
    side.run_on_side([&] {
      dispatched[c] = dispatcher_->dispatch(x.narrow(0, begin, n), expert_idx.narrow(0, begin, n), gates.narrow(0, begin, n));
    });
    side.main_waits_side();
    side.used_on_main(dispatched[c].tokens);
    side.used_on_main(dispatched[c].tokens_per_expert);
    side.used_on_main(dispatched[c].expert_ends);
    expert_out[c] = run_experts(dispatched[c]);
    experts_done[c] = side.mark_main();
    if (c > 0) combine(c - 1);
  }
  combine(chunks - 1);
  side.main_waits_side();
  return torch::cat(y, 0);
}

void MoELayerImpl::add_routing_losses(const Routing& routing, const torch::Tensor& counts, const torch::Tensor& x_in,
                                      MoEOutput& out) const {
  // Each weighted by its coefficient; zero coefficients are skipped.
  const auto& traits = core::router_traits(config_.router.kind);
  const int64_t num_choices = router->num_choices();
  if (traits.balance_loss == core::BalanceLoss::kBilevel) {
    // SMILE's two terms under their own names: node_balance across groups, load_balance inside one.
    if (loss_config_.load_balance > 0 || loss_config_.node_balance > 0) {
      const auto b = losses::bilevel_balance_loss(routing.node_probs, routing.node_idx, routing.local_probs,
                                                  routing.local_idx, loss_config_.node_balance, loss_config_.load_balance);
      if (loss_config_.node_balance > 0) out.losses["node_balance"] = b.node;
      if (loss_config_.load_balance > 0) out.losses["load_balance"] = b.local;
    }
  } else if (loss_config_.load_balance > 0 && traits.balance_loss == core::BalanceLoss::kTokenChoice) {
    const auto scope_counts =
        step_counts_.defined() ? step_counts_.to(counts.device(), counts.scalar_type()) : count_reducer_ ? count_reducer_(counts) : counts;
    out.losses["load_balance"] = losses::load_balance_loss(routing.probs, scope_counts, loss_config_.load_balance);
  }
  if (loss_config_.seq_balance > 0 && x_in.dim() == 3) {
    const int64_t batch = x_in.size(0), seq = x_in.size(1);
    out.losses["seq_balance"] = losses::sequence_balance_loss(
        routing.probs.reshape({batch, seq, num_choices}), routing.expert_idx.reshape({batch, seq, routing.expert_idx.size(1)}),
        loss_config_.seq_balance);
  }
  if (loss_config_.z_loss > 0) {
    auto z = losses::z_loss(routing.z_logits.at(0), loss_config_.z_loss);
    for (size_t i = 1; i < routing.z_logits.size(); ++i) z = z + losses::z_loss(routing.z_logits[i], loss_config_.z_loss);
    out.losses["z_loss"] = z;
  }
  if (loss_config_.contrastive > 0) {
    out.losses["contrastive"] = losses::contrastive_loss(router->prototypes(), routing.projected, routing.expert_idx,
                                                         loss_config_.contrastive_tau, loss_config_.contrastive);
  }
  if (loss_config_.locality > 0) {
    auto mask = local_mask_.defined() ? local_mask_ : torch::ones({num_choices}, torch::kBool);
    out.losses["locality"] = losses::locality_loss(routing.probs, mask, loss_config_.locality_eps, loss_config_.locality);
  }
}

MoEOutput MoELayerImpl::forward(const torch::Tensor& x_in, const TokenInfo& tokens) {
  SY_CHECK(x_in.size(-1) == d_model_, "moe layer: expected last dimension ", d_model_, ", got ", x_in.sizes());
  const auto x = x_in.reshape({-1, d_model_});
  const int64_t num_tokens = x.size(0);
  const int64_t num_experts = config_.num_experts;
  MoEOutput out;

  // Under bf16 autocast on CUDA the layer's input is cast once: the experts compute in bf16 anyway,
  // so the rows travel, are gathered and their gradients summed at half the bytes; the router keeps
  // fp32 logits from bf16 activations (router_logits).
  const auto xb = x.is_cuda() && x.scalar_type() == torch::kFloat32 && runtime::cuda_autocast_enabled() ? x.to(torch::kBFloat16) : x;
  // The shared experts first: they need no routing, so the card runs them while the host issues the
  // routing's small kernels (on CUDA the start of the forward is bound by the host).
  const auto shared_y = shared ? shared->forward(xb) : torch::Tensor();
  const auto flat = [](const torch::Tensor& t) { return t.defined() ? t.reshape({-1}) : t; };
  Routing routing = router->forward(xb, {flat(tokens.ids), flat(tokens.counters)});
  const auto& traits = core::router_traits(config_.router.kind);
  if (every_slot_routed(config_)) {  // known on the host: no kernels before the exchange for them
    out.stats.routed_slots = torch::scalar_tensor(num_tokens * routing.expert_idx.size(1), torch::kInt64);
    out.stats.dropped_slots = torch::zeros({}, torch::kInt64);
  } else if (traits.own_capacity) {
    // Experts chose tokens: a token no expert took lost its k nominal slots.
    out.stats.routed_slots = torch::scalar_tensor(num_tokens * config_.top_k, torch::kInt64);
    out.stats.dropped_slots = routing.expert_idx.ge(0).any(1).logical_not().sum() * config_.top_k;
  } else {
    out.stats.routed_slots = routing.expert_idx.ge(0).sum();
    out.stats.dropped_slots = torch::zeros({}, out.stats.routed_slots.options());
  }

  // Capacity (expert_choice applies its own inside the router).
  if (!traits.own_capacity && config_.capacity_factor > 0) {
    int64_t capacity = expert_capacity(config_.capacity_factor, config_.top_k, num_tokens, num_experts);
    if (traits.locmoe_capacity) {
      out.stats.capacity_min = locmoe_min_capacity(config_.router.grap_delta, d_model_, num_experts);
      capacity = std::max<int64_t>(capacity, static_cast<int64_t>(std::ceil(out.stats.capacity_min)));
    }
    out.stats.capacity = capacity;
    out.stats.dropped_slots = apply_capacity(routing, capacity, num_experts, config_.drop_policy);
  }

  // Routed experts: exchange, run, weight, combine.
  const auto routed_idx = config_.null_experts > 0
                              ? routing.expert_idx.masked_fill(routing.expert_idx.ge(num_experts), -1)
                              : routing.expert_idx;
  auto y = overlap_chunks_ > 1 ? routed_experts_overlapped(xb, routed_idx, routing.gates)
                                : routed_experts(xb, routed_idx, routing.gates);

  // Null experts never leave the rank and cost no expert FLOPs.
  if (config_.null_experts > 0 && config_.null_expert_kind != core::NullExpertKind::kZero) {
    const auto is_null = routing.expert_idx.ge(num_experts);
    const auto null_gate = (routing.gates * is_null.to(routing.gates.scalar_type()));  // [T, k]
    if (config_.null_expert_kind == core::NullExpertKind::kCopy) {
      y = y + x * null_gate.sum(1, true).to(x.scalar_type());
    } else {
      const auto which = (routing.expert_idx - num_experts).clamp(0, config_.null_experts - 1);  // [T, k]
      const auto constants = null_constants.index_select(0, which.reshape({-1})).reshape({num_tokens, which.size(1), d_model_});
      y = y + (constants * null_gate.unsqueeze(2).to(constants.scalar_type())).sum(1);
    }
  }
  if (shared) y = y + shared_y;
  out.y = y.reshape(x_in.sizes());

  const auto counts = losses::expert_slot_counts(routing.expert_idx, router->num_choices());
  if (routing.learned) add_routing_losses(routing, counts, x_in, out);

  out.stats.tokens_per_expert = counts.detach();
  out.stats.expert_idx = routing.expert_idx.detach();
  out.stats.gates = routing.gates.detach();
  if (collect_statistics_) out.stats.entropy = losses::router_entropy(routing.probs.detach());
  return out;
}

}  // namespace switchyard::modules
