#include "core/router_traits.h"

#include "core/error.h"

namespace switchyard::core {
namespace {

using F = RouterFamily;
using S = SlotWidth;
using B = BalanceLoss;

//                      family             learned every  slots          null   own_cap balance           proto  locmoe bias
constexpr RouterTraits kTopK{F::kSoftmaxTopK, true, true, S::kTopK, true, false, B::kTokenChoice, false, false, false};
constexpr RouterTraits kNoisyTopK{F::kSoftmaxTopK, true, true, S::kTopK, true, false, B::kTokenChoice, false, false, false};
constexpr RouterTraits kCosine{F::kSoftmaxTopK, true, true, S::kTopK, false, false, B::kTokenChoice, true, false, false};
constexpr RouterTraits kGrap{F::kSoftmaxTopK, true, false, S::kTopK, false, false, B::kTokenChoice, false, true, false};
constexpr RouterTraits kSigmoidBias{F::kSigmoidBias, true, true, S::kTopK, true, false, B::kTokenChoice, false, false, true};
constexpr RouterTraits kExpertChoice{F::kExpertChoice, true, false, S::kAllChoices, false, true, B::kNone, false, false, false};
constexpr RouterTraits kTopP{F::kTopP, true, false, S::kKMax, false, false, B::kTokenChoice, false, false, false};
constexpr RouterTraits kHash{F::kFixed, false, true, S::kTopK, false, false, B::kNone, false, false, false};
constexpr RouterTraits kRandom{F::kFixed, false, true, S::kTopK, false, false, B::kNone, false, false, false};
constexpr RouterTraits kBilevel{F::kBilevel, true, false, S::kTopK, false, false, B::kBilevel, false, false, false};

}  // namespace

const RouterTraits& router_traits(RouterKind kind) {
  switch (kind) {
    case RouterKind::kTopK: return kTopK;
    case RouterKind::kNoisyTopK: return kNoisyTopK;
    case RouterKind::kCosine: return kCosine;
    case RouterKind::kGrap: return kGrap;
    case RouterKind::kSigmoidBias: return kSigmoidBias;
    case RouterKind::kExpertChoice: return kExpertChoice;
    case RouterKind::kTopP: return kTopP;
    case RouterKind::kHash: return kHash;
    case RouterKind::kRandom: return kRandom;
    case RouterKind::kBilevel: return kBilevel;
  }
  SY_ASSERT(false, "router kind without traits");
  return kTopK;
}

std::string router_kinds_where(const std::function<bool(const RouterTraits&)>& pred) {
  std::string out, last;
  for (const auto& [kind, name] : EnumNames<RouterKind>::kValues) {
    if (!pred(router_traits(kind))) continue;
    if (!last.empty()) out += (out.empty() ? "" : ", ") + last;
    last = name;
  }
  return out.empty() ? last : out + " and " + last;
}

}  // namespace switchyard::core
