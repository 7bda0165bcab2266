// The staged partition problem (items into bins, exactly items / bins each, under a load cap): its
// cost, and the greedy construction with pairwise-swap local search.
#include "placement/partition.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>
#include <set>

#include "core/error.h"

namespace switchyard::placement {

namespace {

/// weight * (bins the pattern's items touch, its home excluded); `touched` is scratch space.
double pattern_cost(const PartitionProblem::Pattern& p, const std::vector<int32_t>& bin_of,
                    std::vector<int32_t>& touched) {
  touched.clear();
  for (int32_t i : p.items) touched.push_back(bin_of[i]);
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  int64_t n = static_cast<int64_t>(touched.size());
  if (p.home >= 0 && std::binary_search(touched.begin(), touched.end(), p.home)) --n;
  return p.weight * static_cast<double>(n);
}

}  // namespace

double PartitionProblem::cost(const std::vector<int32_t>& bin_of) const {
  double total = 0;
  std::vector<int32_t> touched;
  for (const auto& p : patterns) total += pattern_cost(p, bin_of, touched);
  return total;
}

bool PartitionProblem::feasible(const std::vector<int32_t>& bin_of) const {
  std::vector<int64_t> count(bins, 0);
  std::vector<double> bin_load(bins, 0.0);
  for (int64_t i = 0; i < items; ++i) {
    if (bin_of[i] < 0 || bin_of[i] >= bins) return false;
    ++count[bin_of[i]];
    bin_load[bin_of[i]] += load[i];
  }
  for (int64_t b = 0; b < bins; ++b) {
    if (count[b] != items / bins || bin_load[b] > max_bin_load * (1 + 1e-9)) return false;
  }
  return true;
}

namespace {

/// Load excess over the cap, summed over bins (0 when the load constraint holds).
double overload(const PartitionProblem& pb, const std::vector<double>& bin_load) {
  double over = 0;
  for (double l : bin_load) over += std::max(0.0, l - pb.max_bin_load);
  return over;
}

/// Pairwise-swap local search until no improving swap; lexicographic on (overload, cost).
void local_search(const PartitionProblem& pb, std::vector<int32_t>& bin_of) {
  std::vector<std::vector<int32_t>> patterns_of(pb.items);
  for (size_t p = 0; p < pb.patterns.size(); ++p)
    for (int32_t i : pb.patterns[p].items) patterns_of[i].push_back(static_cast<int32_t>(p));
  std::vector<double> bin_load(pb.bins, 0.0);
  for (int64_t i = 0; i < pb.items; ++i) bin_load[bin_of[i]] += pb.load[i];
  std::vector<int32_t> touched;
  std::vector<int32_t> affected;
  auto affected_cost = [&](int32_t a, int32_t b) {
    affected.clear();
    affected.insert(affected.end(), patterns_of[a].begin(), patterns_of[a].end());
    affected.insert(affected.end(), patterns_of[b].begin(), patterns_of[b].end());
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    double c = 0;
    for (int32_t p : affected) c += pattern_cost(pb.patterns[p], bin_of, touched);
    return c;
  };
  for (bool improved = true; improved;) {
    improved = false;
    for (int32_t a = 0; a < pb.items; ++a) {
      for (int32_t b = a + 1; b < pb.items; ++b) {
        const int32_t ba = bin_of[a], bb = bin_of[b];
        if (ba == bb) continue;
        const double over_before = overload(pb, bin_load);
        bin_load[ba] += pb.load[b] - pb.load[a];
        bin_load[bb] += pb.load[a] - pb.load[b];
        const double over_after = overload(pb, bin_load);
        bin_load[ba] -= pb.load[b] - pb.load[a];
        bin_load[bb] -= pb.load[a] - pb.load[b];
        if (over_after > over_before + 1e-12) continue;
        const double before = affected_cost(a, b);
        std::swap(bin_of[a], bin_of[b]);
        const double after = affected_cost(a, b);
        if (over_after < over_before - 1e-12 || after < before - 1e-12) {
          bin_load[ba] += pb.load[b] - pb.load[a];
          bin_load[bb] += pb.load[a] - pb.load[b];
          improved = true;
        } else {
          std::swap(bin_of[a], bin_of[b]);
        }
      }
    }
  }
}

/// Greedy: items in `order`, each into the open bin with the most co-activation with items already
/// there (ties: the lighter bin), preferring bins whose load stays under the cap.
std::vector<int32_t> greedy_construct(const PartitionProblem& pb, const std::vector<double>& affinity,
                                      const std::vector<int32_t>& order) {
  const int64_t per_bin = pb.items / pb.bins;
  std::vector<int32_t> bin_of(pb.items, -1);
  std::vector<int64_t> count(pb.bins, 0);
  std::vector<double> bin_load(pb.bins, 0.0), gain(pb.bins);
  for (int32_t i : order) {
    std::fill(gain.begin(), gain.end(), 0.0);
    for (int32_t j = 0; j < pb.items; ++j)
      if (bin_of[j] >= 0) gain[bin_of[j]] += affinity[i * pb.items + j];
    int32_t best = -1;
    for (int pass = 0; pass < 2 && best < 0; ++pass) {  // pass 0: within the load cap
      for (int32_t b = 0; b < pb.bins; ++b) {
        if (count[b] >= per_bin) continue;
        if (pass == 0 && bin_load[b] + pb.load[i] > pb.max_bin_load) continue;
        if (best < 0 || gain[b] > gain[best] + 1e-12 ||
            (gain[b] > gain[best] - 1e-12 && bin_load[b] < bin_load[best]))
          best = b;
      }
    }
    bin_of[i] = best;
    ++count[best];
    bin_load[best] += pb.load[i];
  }
  return bin_of;
}

}  // namespace

PartitionResult solve_greedy(const PartitionProblem& pb, uint64_t seed) {
  SY_CHECK_AS(UsageError, pb.bins > 0 && pb.items % pb.bins == 0, "placement: ", pb.items,
              " experts do not split evenly over ", pb.bins, " bins");
  std::vector<double> affinity(pb.items * pb.items, 0.0), strength(pb.items, 0.0);
  for (const auto& p : pb.patterns) {
    for (int32_t a : p.items)
      for (int32_t b : p.items)
        if (a != b) affinity[a * pb.items + b] += p.weight;
  }
  for (int64_t i = 0; i < pb.items; ++i)
    strength[i] = std::accumulate(affinity.begin() + i * pb.items, affinity.begin() + (i + 1) * pb.items, 0.0);
  std::vector<int32_t> order(pb.items);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return strength[a] > strength[b]; });
  PartitionResult best;
  std::mt19937_64 rng(seed);
  for (int restart = 0; restart < 8; ++restart) {
    if (restart > 0) std::shuffle(order.begin(), order.end(), rng);
    auto bin_of = greedy_construct(pb, affinity, order);
    local_search(pb, bin_of);
    const double cost = pb.cost(bin_of);
    const bool feasible = pb.feasible(bin_of);
    const bool best_feasible = !best.bin_of.empty() && pb.feasible(best.bin_of);
    if (best.bin_of.empty() || (feasible && !best_feasible) || (feasible == best_feasible && cost < best.cost)) {
      best.bin_of = bin_of;
      best.cost = cost;
    }
  }
  return best;
}

double PartitionProblem::bin_cost(int32_t bin, const std::vector<int32_t>& set) const {
  std::vector<char> in(items, 0);
  for (int32_t i : set) in[i] = 1;
  double c = 0;
  for (const auto& p : patterns) {
    if (p.home == bin) continue;
    for (int32_t i : p.items)
      if (in[i]) {
        c += p.weight;
        break;
      }
  }
  return c;
}

}  // namespace switchyard::placement
