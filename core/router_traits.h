// What each router kind can do, in one table: the config's rules (core/config.cpp), the MoE layer
// (modules/moe_layer.cpp) and the routers (modules/router.cpp) all read it. docs/routing.md.
#pragma once

#include <functional>
#include <string>

#include "core/config.h"

namespace switchyard::core {

/// How a router's families group: how they pick experts (docs/routing.md, "Families").
enum class RouterFamily {
  kSoftmaxTopK,   ///< topk, noisy_topk, cosine, grap: logits, softmax, top-k
  kSigmoidBias,   ///< sigmoid scores, top-k by score + a load-following bias (aux-loss-free)
  kExpertChoice,  ///< experts pick their top-capacity tokens
  kTopP,          ///< dynamic k: the fewest experts reaching a probability mass
  kFixed,         ///< hash, random: not learned
  kBilevel,       ///< SMILE: a node, then experts inside it
};

/// Slots per token in a routing decision (the width of expert_idx).
enum class SlotWidth { kTopK, kKMax, kAllChoices };
/// The load-balance loss a router takes.
enum class BalanceLoss { kTokenChoice, kBilevel, kNone };

struct RouterTraits {
  RouterFamily family;
  bool learned;               ///< a loss can move it
  bool every_slot_an_expert;  ///< each of its top_k slots names an expert (before capacity, null experts)
  SlotWidth slots;
  bool chooses_null_experts;  ///< model.moe.null_experts allowed
  bool own_capacity;          ///< applies capacity itself (needs capacity_factor > 0)
  BalanceLoss balance_loss;   ///< global_batch scope only for kTokenChoice
  bool prototypes;            ///< cosine: the contrastive loss applies
  bool locmoe_capacity;       ///< grap: capacity at least LocMoE's Theorem-1 bound
  bool bias_update;           ///< sigmoid_bias: the trainer moves its bias by the global load
};

const RouterTraits& router_traits(RouterKind kind);

/// "a, b and c": the kinds whose traits satisfy `pred`, for error messages.
std::string router_kinds_where(const std::function<bool(const RouterTraits&)>& pred);

}  // namespace switchyard::core
