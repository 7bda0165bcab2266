// The placement planner: statistics, traffic prediction, staged partitions, greedy + local search,
// and the CBC ILP.
#include "parallel/placement_planner.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "core/build_info.h"
#include "core/error.h"

#if SWITCHYARD_HAS_CBC
#include <coin/Cbc_C_Interface.h>
#endif

namespace switchyard::parallel {

std::vector<LayerStats> routing_statistics(const RoutingTrace& trace) {
  const int64_t E = trace.num_experts;
  std::vector<LayerStats> stats(trace.layers.size());
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    const auto& layer = trace.layers[l];
    auto& s = stats[l];
    s.load.assign(E, 0);
    s.coactivation.assign(E * E, 0);
    const int64_t k = layer.top_k;
    const LayerRouting* next = l + 1 < trace.layers.size() ? &trace.layers[l + 1] : nullptr;
    if (next) s.transitions.assign(E * E, 0);
    for (int64_t t = 0; t < layer.num_tokens(); ++t) {
      for (int64_t a = 0; a < k; ++a) {
        const int32_t e = layer.experts[t * k + a];
        if (e < 0) continue;
        ++s.load[e];
        for (int64_t b = 0; b < k; ++b) {
          const int32_t f = layer.experts[t * k + b];
          if (b != a && f >= 0 && f != e) ++s.coactivation[e * E + f];
        }
        if (next) {
          for (int64_t b = 0; b < next->top_k; ++b) {
            const int32_t f = next->experts[t * next->top_k + b];
            if (f >= 0) ++s.transitions[e * E + f];
          }
        }
      }
    }
  }
  return stats;
}

RowCounts predict_rows(const LayerRouting& layer, const std::vector<int64_t>& owner, const PlanTopology& topo,
                       core::DispatcherKind kind) {
  RowCounts rows;
  const int64_t k = layer.top_k, rpn = topo.ranks_per_node;
  std::vector<int64_t> ranks;
  for (int64_t t = 0; t < layer.num_tokens(); ++t) {
    ranks.clear();
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = layer.experts[t * k + j];
      if (e >= 0) ranks.push_back(owner[e]);
    }
    std::sort(ranks.begin(), ranks.end());
    ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
    const int64_t src = layer.source_rank[t];
    if (kind == core::DispatcherKind::kFlat) {
      for (int64_t r : ranks) {
        if (r == src) continue;
        (topo.node_of(r) != topo.node_of(src) ? rows.inter_node : rows.intra_node) += 1;
      }
      continue;
    }
    int64_t last_node = -1;
    for (int64_t r : ranks) {  // ranks sorted, so each node's ranks are adjacent
      const int64_t n = topo.node_of(r);
      if (n != last_node && n != topo.node_of(src)) rows.inter_node += 1;
      last_node = n;
      if (r % rpn != src % rpn) rows.intra_node += 1;  // sent on by the rank with the source's local rank
    }
  }
  const double tokens = std::max<int64_t>(1, layer.num_tokens());
  rows.inter_node /= tokens;
  rows.intra_node /= tokens;
  return rows;
}

double best_inter_node_rows_exhaustive(const LayerRouting& layer, int64_t num_experts, const PlanTopology& topo,
                                       int64_t max_splits) {
  if (topo.nodes() != 2 || num_experts > 62 || num_experts % 2 != 0) return -1;
  // C(E, E/2) / 2 splits (expert 0 fixed on node 0), each with both node labels.
  double splits = 1;
  for (int64_t i = 0; i < num_experts / 2; ++i)
    splits = splits * static_cast<double>(num_experts - i) / static_cast<double>(i + 1);
  if (splits / 2 > static_cast<double>(max_splits)) return -1;
  // Patterns: (source node, expert mask) -> tokens.
  std::map<std::pair<int, uint64_t>, double> patterns;
  for (int64_t t = 0; t < layer.num_tokens(); ++t) {
    uint64_t mask = 0;
    for (int64_t j = 0; j < layer.top_k; ++j) {
      const int32_t e = layer.experts[t * layer.top_k + j];
      if (e >= 0) mask |= uint64_t{1} << e;
    }
    if (mask) patterns[{static_cast<int>(topo.node_of(layer.source_rank[t])), mask}] += 1;
  }
  const int64_t half = num_experts / 2;
  double best = -1;
  // Enumerate masks of node 0 with popcount half containing expert 0 (Gosper's hack over the others).
  const int64_t rest = num_experts - 1;
  for (uint64_t m = (uint64_t{1} << (half - 1)) - 1; m < (uint64_t{1} << rest);) {
    const uint64_t node0 = (m << 1) | 1;
    // Both labelings of the split: tokens pay for the node that is not theirs.
    double rows = 0, swapped = 0;
    for (const auto& [key, count] : patterns) {
      const bool on0 = (key.second & node0) != 0, on1 = (key.second & ~node0) != 0;
      rows += count * ((key.first == 0 ? on1 : on0) ? 1.0 : 0.0);
      swapped += count * ((key.first == 0 ? on0 : on1) ? 1.0 : 0.0);
    }
    rows = std::min(rows, swapped);
    if (best < 0 || rows < best) best = rows;
    if (m == 0) break;
    const uint64_t c = m & (~m + 1), r = m + c;
    m = (((r ^ m) >> 2) / c) | r;
  }
  return best / static_cast<double>(std::max<int64_t>(1, layer.num_tokens()));
}

double bytes_per_row(int64_t d_model, int64_t top_k, int64_t activation_bytes) {
  // Dispatch: rows + fp32 gates forward and their gradients back; int64 metadata (k targets + origin)
  // forward only. Combine: rows forward, gradients back.
  const double row = static_cast<double>(d_model * activation_bytes);
  const double gates = 4.0 * static_cast<double>(top_k);
  return 2 * (row + gates) + 8.0 * static_cast<double>(top_k + 1) + 2 * row;
}

// ---------------------------------------------------------------------------------------------
// Partition problem.

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

#if SWITCHYARD_HAS_CBC

bool ilp_available() { return true; }

PartitionResult solve_ilp(const PartitionProblem& pb, const PartitionResult& start, double time_limit_s,
                          double relative_gap) {
  // x[i][b] binary: item i in bin b. y[p][b] in [0, 1] for b != home(p): pattern p touches bin b;
  // minimizing sum w_p y[p][b] with y[p][b] >= x[i][b] (i in p) makes y the indicator.
  Cbc_Model* model = Cbc_newModel();
  auto x = [&](int64_t i, int64_t b) { return static_cast<int>(i * pb.bins + b); };
  for (int64_t i = 0; i < pb.items; ++i)
    for (int64_t b = 0; b < pb.bins; ++b) Cbc_addCol(model, "", 0.0, 1.0, 0.0, 1, 0, nullptr, nullptr);
  int next_col = static_cast<int>(pb.items * pb.bins);
  // A single-item pattern costs w * (1 - x[i][home]) exactly (w with no home): a constant plus
  // -w on x[i][home], no y needed. Multi-item patterns get y[p][b].
  double constant = 0;
  std::vector<double> x_obj(pb.items * pb.bins, 0.0);
  std::vector<std::vector<int>> y(pb.patterns.size(), std::vector<int>(pb.bins, -1));
  for (size_t p = 0; p < pb.patterns.size(); ++p) {
    const auto& pat = pb.patterns[p];
    if (pat.items.size() == 1) {
      constant += pat.weight;
      if (pat.home >= 0) x_obj[x(pat.items[0], pat.home)] -= pat.weight;
      continue;
    }
    for (int64_t b = 0; b < pb.bins; ++b) {
      if (b == pat.home) continue;
      Cbc_addCol(model, "", 0.0, 1.0, pat.weight, 0, 0, nullptr, nullptr);
      y[p][b] = next_col++;
    }
  }
  for (int64_t c = 0; c < pb.items * pb.bins; ++c)
    if (x_obj[c] != 0) Cbc_setObjCoeff(model, static_cast<int>(c), x_obj[c]);
  std::vector<int> cols;
  std::vector<double> coefs;
  for (int64_t i = 0; i < pb.items; ++i) {  // each item in one bin
    cols.clear();
    coefs.clear();
    for (int64_t b = 0; b < pb.bins; ++b) {
      cols.push_back(x(i, b));
      coefs.push_back(1.0);
    }
    Cbc_addRow(model, "", static_cast<int>(cols.size()), cols.data(), coefs.data(), 'E', 1.0);
  }
  for (int64_t b = 0; b < pb.bins; ++b) {  // equal counts, load cap
    cols.clear();
    coefs.clear();
    std::vector<double> loads;
    for (int64_t i = 0; i < pb.items; ++i) {
      cols.push_back(x(i, b));
      coefs.push_back(1.0);
      loads.push_back(pb.load[i]);
    }
    Cbc_addRow(model, "", static_cast<int>(cols.size()), cols.data(), coefs.data(), 'E',
               static_cast<double>(pb.items / pb.bins));
    Cbc_addRow(model, "", static_cast<int>(cols.size()), cols.data(), loads.data(), 'L', pb.max_bin_load);
  }
  for (size_t p = 0; p < pb.patterns.size(); ++p) {
    for (int64_t b = 0; b < pb.bins; ++b) {
      if (y[p][b] < 0) continue;
      for (int32_t i : pb.patterns[p].items) {
        const int row_cols[2] = {y[p][b], x(i, b)};
        const double row_coefs[2] = {1.0, -1.0};
        Cbc_addRow(model, "", 2, row_cols, row_coefs, 'G', 0.0);
      }
    }
  }
  // Strengthening for pairs (top-2 routing): s[{i,j}][b] = "both in b" <= x[i][b], x[j][b];
  // y[p][b] >= x[i][b] + x[j][b] - s[{i,j}][b]; and the star inequality: a bin holding i has room
  // for items / bins - 1 partners, so sum_j s[{i,j}][b] <= (items / bins - 1) x[i][b]. Without it the
  // LP spreads every item evenly over the bins and its bound is weak.
  std::map<std::pair<int32_t, int32_t>, int> pair_base;  // pair -> first of its `bins` s columns
  for (const auto& pat : pb.patterns) {
    if (pat.items.size() != 2) continue;
    const auto key = std::minmax(pat.items[0], pat.items[1]);
    if (pair_base.count(key)) continue;
    pair_base[key] = next_col;
    for (int64_t b = 0; b < pb.bins; ++b) {
      Cbc_addCol(model, "", 0.0, 1.0, 0.0, 0, 0, nullptr, nullptr);
      for (int32_t i : {key.first, key.second}) {
        const int row_cols[2] = {next_col, x(i, b)};
        const double row_coefs[2] = {1.0, -1.0};
        Cbc_addRow(model, "", 2, row_cols, row_coefs, 'L', 0.0);
      }
      ++next_col;
    }
  }
  for (size_t p = 0; p < pb.patterns.size(); ++p) {
    const auto& pat = pb.patterns[p];
    if (pat.items.size() != 2) continue;
    const int base = pair_base.at(std::minmax(pat.items[0], pat.items[1]));
    for (int64_t b = 0; b < pb.bins; ++b) {
      if (y[p][b] < 0) continue;
      const int row_cols[4] = {y[p][b], x(pat.items[0], b), x(pat.items[1], b), base + static_cast<int>(b)};
      const double row_coefs[4] = {1.0, -1.0, -1.0, 1.0};
      Cbc_addRow(model, "", 4, row_cols, row_coefs, 'G', 0.0);
    }
  }
  {
    std::vector<std::vector<int>> partners(pb.items);  // s base columns per item
    for (const auto& [key, base] : pair_base) {
      partners[key.first].push_back(base);
      partners[key.second].push_back(base);
    }
    const double room = static_cast<double>(pb.items / pb.bins - 1);
    for (int64_t i = 0; i < pb.items; ++i) {
      if (static_cast<double>(partners[i].size()) <= room) continue;  // never binding
      for (int64_t b = 0; b < pb.bins; ++b) {
        cols.clear();
        coefs.clear();
        for (int base : partners[i]) {
          cols.push_back(base + static_cast<int>(b));
          coefs.push_back(1.0);
        }
        cols.push_back(x(i, b));
        coefs.push_back(-room);
        Cbc_addRow(model, "", static_cast<int>(cols.size()), cols.data(), coefs.data(), 'L', 0.0);
      }
    }
  }
  Cbc_setObjSense(model, 1.0);
  Cbc_setLogLevel(model, 0);
  Cbc_setMaximumSeconds(model, std::max(0.1, time_limit_s));
  Cbc_setAllowableFractionGap(model, relative_gap);
  if (!start.bin_of.empty() && pb.feasible(start.bin_of)) {
    std::vector<int> idx;
    std::vector<double> val;
    for (int64_t i = 0; i < pb.items; ++i)
      for (int64_t b = 0; b < pb.bins; ++b) {
        idx.push_back(x(i, b));
        val.push_back(start.bin_of[i] == b ? 1.0 : 0.0);
      }
    for (size_t p = 0; p < pb.patterns.size(); ++p)
      for (int64_t b = 0; b < pb.bins; ++b) {
        if (y[p][b] < 0) continue;
        bool touches = false;
        for (int32_t i : pb.patterns[p].items) touches |= start.bin_of[i] == b;
        idx.push_back(y[p][b]);
        val.push_back(touches ? 1.0 : 0.0);
      }
    for (const auto& [key, base] : pair_base)
      for (int64_t b = 0; b < pb.bins; ++b) {
        idx.push_back(base + static_cast<int>(b));
        val.push_back(start.bin_of[key.first] == b && start.bin_of[key.second] == b ? 1.0 : 0.0);
      }
    Cbc_setMIPStartI(model, static_cast<int>(idx.size()), idx.data(), val.data());
  }
  Cbc_solve(model);
  PartitionResult r;
  const double* sol = Cbc_getColSolution(model);
  if (sol != nullptr) {
    r.bin_of.assign(pb.items, -1);
    for (int64_t i = 0; i < pb.items; ++i)
      for (int64_t b = 0; b < pb.bins; ++b)
        if (sol[x(i, b)] > 0.5) r.bin_of[i] = static_cast<int32_t>(b);
  }
  r.bound = Cbc_getBestPossibleObjValue(model) + constant;
  r.optimal = Cbc_isProvenOptimal(model) != 0;
  Cbc_deleteModel(model);
  if (r.bin_of.empty() || !pb.feasible(r.bin_of)) {  // no (feasible) incumbent: keep the start
    r.bin_of = start.bin_of;
    r.optimal = false;
  }
  r.cost = pb.cost(r.bin_of);
  if (!start.bin_of.empty() && start.cost < r.cost) {
    r.bin_of = start.bin_of;
    r.cost = start.cost;
  }
  r.bound = std::min(r.bound, r.cost);
  return r;
}

#else

bool ilp_available() { return false; }

PartitionResult solve_ilp(const PartitionProblem&, const PartitionResult&, double, double) {
  throw UsageError("--solver ilp: this build has no COIN-OR CBC (install coinor-libcbc-dev and rebuild)");
}

#endif

// ---------------------------------------------------------------------------------------------
// Staged planning.

namespace {

/// Patterns of one layer's tokens: the distinct items each token touches (mapped through `item_of`,
/// -1 = not in this problem) with its home bin, aggregated; weight = tokens / total * scale.
std::vector<PartitionProblem::Pattern> token_patterns(const LayerRouting& layer, const std::vector<int32_t>& item_of,
                                                      const std::function<int32_t(int64_t)>& home_of, double scale) {
  std::map<std::pair<int32_t, std::vector<int32_t>>, double> agg;
  const int64_t k = layer.top_k;
  std::vector<int32_t> items;
  for (int64_t t = 0; t < layer.num_tokens(); ++t) {
    items.clear();
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = layer.experts[t * k + j];
      if (e >= 0 && item_of[e] >= 0) items.push_back(item_of[e]);
    }
    if (items.empty()) continue;
    std::sort(items.begin(), items.end());
    items.erase(std::unique(items.begin(), items.end()), items.end());
    agg[{home_of(layer.source_rank[t]), items}] += scale;
  }
  std::vector<PartitionProblem::Pattern> out;
  const double tokens = std::max<int64_t>(1, layer.num_tokens());
  for (auto& [key, w] : agg) out.push_back({key.second, key.first, w / tokens});
  return out;
}

struct StageResult {
  PartitionResult greedy, best;
};

StageResult solve_stage(const PartitionProblem& pb_in, const PlannerOptions& o, bool use_ilp, double time_s) {
  StageResult r;
  r.greedy = solve_greedy(pb_in, o.seed);
  // When no assignment the greedy finds meets the load cap (a few experts carry most tokens), the cap
  // becomes the greedy's heaviest bin: the ILP then cuts traffic without adding imbalance, and has a
  // feasible start.
  PartitionProblem pb = pb_in;
  if (!pb.feasible(r.greedy.bin_of)) {
    std::vector<double> bin_load(pb.bins, 0.0);
    for (int64_t i = 0; i < pb.items; ++i) bin_load[r.greedy.bin_of[i]] += pb.load[i];
    pb.max_bin_load = *std::max_element(bin_load.begin(), bin_load.end()) * (1 + 1e-9);
  }
  r.best = use_ilp ? solve_ilp(pb, r.greedy, time_s, o.relative_gap) : r.greedy;
  if (std::getenv("SWITCHYARD_PLAN_DEBUG")) {
    std::fprintf(stderr, "stage: %lld items, %lld bins, %zu patterns, feasible start %d, greedy %.4f, ilp %.4f, bound %.4f, "
                 "optimal %d, time %.2f s\n", (long long)pb.items, (long long)pb.bins, pb.patterns.size(),
                 (int)pb_in.feasible(r.greedy.bin_of), r.greedy.cost, r.best.cost, r.best.bound, (int)r.best.optimal, time_s);
  }
  return r;
}

double weighted(const RowCounts& rows, double inter_weight) { return inter_weight * rows.inter_node + rows.intra_node; }

double load_ratio(const std::vector<int64_t>& load, const std::vector<int64_t>& owner, int64_t ranks) {
  std::vector<double> per_rank(ranks, 0.0);
  double total = 0;
  for (size_t e = 0; e < owner.size(); ++e) {
    per_rank[owner[e]] += static_cast<double>(load[e]);
    total += static_cast<double>(load[e]);
  }
  return total > 0 ? *std::max_element(per_rank.begin(), per_rank.end()) / (total / static_cast<double>(ranks)) : 1.0;
}

/// A report before any layer: ILP fields -1 when the ILP does not run.
PlanReport start_report(bool use_ilp) {
  PlanReport report;
  report.solver_used = use_ilp ? "ilp" : "greedy";
  report.objective_ilp = use_ilp ? 0 : -1;
  report.bound = use_ilp ? 0 : -1;
  report.ilp_optimal = use_ilp;
  return report;
}

std::vector<int64_t> contiguous_owner(int64_t experts, int64_t ranks) {
  std::vector<int64_t> owner(experts);
  for (int64_t e = 0; e < experts; ++e) owner[e] = e / (experts / ranks);
  return owner;
}

/// Per-token bytes predictions and load of a finished plan, into the report.
void account(PlanReport& report, const RoutingTrace& trace, const std::vector<LayerStats>& stats,
             const PlanTopology& topo) {
  const int64_t E = trace.num_experts;
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    const auto contiguous = contiguous_owner(E, topo.ranks);
    const auto chosen = predict_rows(trace.layers[l], report.layers[l].owner, topo, core::DispatcherKind::kHierarchical);
    const auto contig = predict_rows(trace.layers[l], contiguous, topo, core::DispatcherKind::kHierarchical);
    report.inter_node_rows += chosen.inter_node;
    report.intra_node_rows += chosen.intra_node;
    report.inter_node_rows_contiguous += contig.inter_node;
    report.intra_node_rows_contiguous += contig.intra_node;
    report.load_max_over_mean = std::max(report.load_max_over_mean, load_ratio(stats[l].load, report.layers[l].owner, topo.ranks));
    report.load_max_over_mean_contiguous =
        std::max(report.load_max_over_mean_contiguous, load_ratio(stats[l].load, contiguous, topo.ranks));
  }
}

/// ExFlow's objective: keep consecutive layers' experts of a token on one rank (for context-coherent
/// dispatch). The first layer stays contiguous; each next layer is an assignment problem against the
/// previous layer's placement: expert f on rank r earns the transitions e -> f per token from experts
/// e on r (full weight) or on r's node (half). As single-item patterns (cost w (1 - x[f][r])) it is a
/// PartitionProblem whose LP is a transportation problem, so the ILP solves it exactly. Objective:
/// the transition distance per token (0 same rank, 0.5 same node, 1 other node), summed over layers.
PlanReport plan_inter_layer(const RoutingTrace& trace, const PlannerOptions& o, const std::vector<LayerStats>& stats) {
  const PlanTopology& topo = o.topology;
  const int64_t E = trace.num_experts, ranks = topo.ranks;
  const bool use_ilp = o.solver == "ilp" && ilp_available();
  PlanReport report = start_report(use_ilp);
  const auto start = std::chrono::steady_clock::now();
  const auto contiguous = contiguous_owner(E, ranks);
  report.layers.push_back({contiguous, 0});
  for (size_t l = 1; l < trace.layers.size(); ++l) {
    const auto& transitions = stats[l - 1].transitions;
    const auto& prev = report.layers[l - 1].owner;
    const double tokens = std::max<int64_t>(1, trace.layers[l].num_tokens());
    PartitionProblem pb;
    pb.items = E;
    pb.bins = ranks;
    pb.load.assign(stats[l].load.begin(), stats[l].load.end());
    pb.max_bin_load = (1 + o.load_slack) * std::accumulate(pb.load.begin(), pb.load.end(), 0.0) / static_cast<double>(ranks);
    // A transition e -> f costs 0 with f on e's rank, 0.5 on its node, 1 elsewhere: 0.5 [f not on
    // rank(e)] + 0.5 [f not on node(e)], and the node term is sum over r' in node(e) of 0.5 [f not on
    // r'] minus the constant 0.5 (ranks_per_node - 1).
    double offset = 0;
    for (int64_t f = 0; f < E; ++f) {
      std::vector<double> earn(ranks, 0.0);
      for (int64_t e = 0; e < E; ++e) {
        const double t = static_cast<double>(transitions[e * E + f]) / tokens;
        if (t == 0) continue;
        offset += 0.5 * t * static_cast<double>(topo.ranks_per_node - 1);
        for (int64_t r = 0; r < ranks; ++r) {
          if (prev[e] == r) earn[r] += t;
          else if (topo.node_of(prev[e]) == topo.node_of(r)) earn[r] += 0.5 * t;
        }
      }
      for (int64_t r = 0; r < ranks; ++r)
        if (earn[r] > 0) pb.patterns.push_back({{static_cast<int32_t>(f)}, static_cast<int32_t>(r), earn[r]});
    }
    // The objective: transition distance per token.
    auto distance = [&](double cost) { return cost - offset; };
    std::vector<int32_t> contig32(contiguous.begin(), contiguous.end());
    const auto greedy = solve_greedy(pb, o.seed);
    auto best = greedy;
    if (use_ilp) {
      const double left = o.time_limit_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      best = solve_ilp(pb, greedy, std::max(0.1, left / static_cast<double>(trace.layers.size() - l)), o.relative_gap);
      report.objective_ilp += distance(best.cost);
      report.bound += distance(best.bound);
      report.ilp_optimal = report.ilp_optimal && best.optimal;
    }
    report.objective_contiguous += distance(pb.cost(contig32));
    report.objective_greedy += distance(greedy.cost);
    const auto& chosen = best.cost <= greedy.cost ? best.bin_of : greedy.bin_of;
    LayerPlan plan;
    plan.owner.assign(chosen.begin(), chosen.end());
    plan.objective = distance(pb.cost(chosen));
    report.layers.push_back(std::move(plan));
  }
  report.solve_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (use_ilp) report.gap = report.objective_ilp > 0 ? (report.objective_ilp - report.bound) / report.objective_ilp : 0;
  account(report, trace, stats, topo);
  return report;
}

}  // namespace

PlanReport plan_placement(const RoutingTrace& trace, const PlannerOptions& o) {
  const PlanTopology& topo = o.topology;
  const int64_t E = trace.num_experts, ranks = topo.ranks, rpn = topo.ranks_per_node, nodes = topo.nodes();
  SY_CHECK_AS(UsageError, ranks > 0 && rpn > 0 && ranks % rpn == 0, "--ranks-per-node (", rpn,
              ") must divide --ranks (", ranks, ")");
  SY_CHECK_AS(UsageError, E % ranks == 0, "--ranks: ", ranks, " does not divide the trace's ", E, " experts");
  SY_CHECK_AS(UsageError, trace.ep_size == ranks, "--ranks: the trace's tokens come from ", trace.ep_size,
              " expert-parallel ranks; plan for the same number (got ", ranks, ")");
  SY_CHECK_AS(UsageError, o.objective == "coactivation" || o.objective == "inter_layer",
              "--objective: coactivation or inter_layer, got ", o.objective);
  SY_CHECK_AS(UsageError, o.solver == "ilp" || o.solver == "greedy", "--solver: ilp or greedy, got ", o.solver);
  SY_CHECK_AS(UsageError, o.load_slack >= 0, "--load-slack must be >= 0");
  const bool use_ilp = o.solver == "ilp" && ilp_available();
  const auto stats = routing_statistics(trace);
  if (o.objective == "inter_layer") return plan_inter_layer(trace, o, stats);
  const auto kind = core::DispatcherKind::kHierarchical;
  const int64_t stages_per_layer = (nodes > 1 ? 1 : 0) + nodes;
  // ILP time: each stage gets an equal share of what is left, so time a fast stage leaves goes on.
  int64_t stages_left = static_cast<int64_t>(trace.layers.size()) * stages_per_layer;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.time_limit_s);
  auto stage_time = [&] {
    const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    return std::max(0.1, left / static_cast<double>(std::max<int64_t>(1, stages_left--)));
  };

  PlanReport report = start_report(use_ilp);
  const auto start = std::chrono::steady_clock::now();
  for (size_t l = 0; l < trace.layers.size(); ++l) {
    const auto& layer = trace.layers[l];
    const auto& load = stats[l].load;
    const double total_load = std::accumulate(load.begin(), load.end(), 0.0);
    const auto contiguous = contiguous_owner(E, ranks);

    // Stage A: experts to nodes (inter-node rows, home = the token's node).
    std::vector<int32_t> node_greedy(E, 0), node_best(E, 0);
    double bound_a = 0;
    if (nodes > 1) {
      PartitionProblem pa;
      pa.items = E;
      pa.bins = nodes;
      pa.load.assign(load.begin(), load.end());
      pa.max_bin_load = (1 + o.load_slack) * total_load / static_cast<double>(nodes);
      std::vector<int32_t> ident(E);
      std::iota(ident.begin(), ident.end(), 0);
      pa.patterns = token_patterns(layer, ident, [&](int64_t src) { return static_cast<int32_t>(topo.node_of(src)); },
                                   o.inter_node_weight);
      const auto a = solve_stage(pa, o, use_ilp, use_ilp ? stage_time() : 0);
      node_greedy = a.greedy.bin_of;
      node_best = a.best.bin_of;
      bound_a = a.best.bound;
      report.ilp_optimal = report.ilp_optimal && a.best.optimal;
    }
    // Stage B: within each node, its experts to its ranks (intra-node rows, home = the source's local rank).
    auto stage_b = [&](const std::vector<int32_t>& node_of_expert, bool ilp, double* bound, bool* optimal) {
      std::vector<int64_t> owner(E, -1);
      for (int64_t n = 0; n < nodes; ++n) {
        std::vector<int32_t> item_of(E, -1), expert_of_item;
        for (int64_t e = 0; e < E; ++e)
          if (node_of_expert[e] == n) {
            item_of[e] = static_cast<int32_t>(expert_of_item.size());
            expert_of_item.push_back(static_cast<int32_t>(e));
          }
        PartitionProblem pb;
        pb.items = static_cast<int64_t>(expert_of_item.size());
        pb.bins = rpn;
        for (int32_t e : expert_of_item) pb.load.push_back(static_cast<double>(load[e]));
        pb.max_bin_load = (1 + o.load_slack) * total_load / static_cast<double>(ranks);
        pb.patterns = token_patterns(layer, item_of, [&](int64_t src) { return static_cast<int32_t>(src % rpn); }, 1.0);
        const auto b = solve_stage(pb, o, ilp, ilp ? stage_time() : 0);
        if (bound) *bound += b.best.bound;
        if (optimal) *optimal = *optimal && b.best.optimal;
        for (int64_t i = 0; i < pb.items; ++i) owner[expert_of_item[i]] = n * rpn + b.best.bin_of[i];
      }
      return owner;
    };
    double bound_b = 0;
    bool optimal_b = true;
    const auto owner_greedy = stage_b(node_greedy, false, nullptr, nullptr);
    const auto owner_best = use_ilp ? stage_b(node_best, true, &bound_b, &optimal_b) : owner_greedy;
    report.ilp_optimal = report.ilp_optimal && optimal_b;

    const auto rows_contig = predict_rows(layer, contiguous, topo, kind);
    const auto rows_greedy = predict_rows(layer, owner_greedy, topo, kind);
    const auto rows_best = predict_rows(layer, owner_best, topo, kind);
    report.objective_contiguous += weighted(rows_contig, o.inter_node_weight);
    report.objective_greedy += weighted(rows_greedy, o.inter_node_weight);
    if (use_ilp) {
      report.objective_ilp += weighted(rows_best, o.inter_node_weight);
      report.bound += bound_a + bound_b;
    }
    // The chosen plan: the better of greedy and ILP; never worse than contiguous.
    LayerPlan plan;
    plan.owner = weighted(rows_best, o.inter_node_weight) <= weighted(rows_greedy, o.inter_node_weight) ? owner_best
                                                                                                         : owner_greedy;
    auto chosen = predict_rows(layer, plan.owner, topo, kind);
    if (weighted(chosen, o.inter_node_weight) > weighted(rows_contig, o.inter_node_weight)) {
      plan.owner = contiguous;
      chosen = rows_contig;
    }
    plan.objective = weighted(chosen, o.inter_node_weight);
    report.layers.push_back(std::move(plan));
  }
  report.solve_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  account(report, trace, stats, topo);
  if (use_ilp && report.objective_ilp > 0) report.gap = (report.objective_ilp - report.bound) / report.objective_ilp;
  if (use_ilp && report.objective_ilp == 0) report.gap = 0;
  return report;
}

}  // namespace switchyard::parallel
