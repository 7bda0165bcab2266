// The placement planner: statistics, traffic prediction, staged partitions, greedy + local search,
// and the CBC ILP.
#include "parallel/placement_planner.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "core/build_info.h"
#include "core/error.h"

#if SWITCHYARD_HAS_CBC
#include <coin/Cbc_C_Interface.h>
#include <coin/Clp_C_Interface.h>
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

namespace {

/// A mixed-integer linear program held as arrays, so one model feeds both Clp (the LP relaxation,
/// tightened by separated cuts) and CBC (the branch and bound).
struct LinearModel {
  std::vector<double> col_lower, col_upper, objective;
  std::vector<char> integer;
  std::vector<CoinBigIndex> row_start{0};
  std::vector<int> row_col;
  std::vector<double> row_coef, row_lower, row_upper;

  int cols() const { return static_cast<int>(objective.size()); }
  int rows() const { return static_cast<int>(row_lower.size()); }
  int add_col(double lower, double upper, double cost, bool is_integer) {
    col_lower.push_back(lower);
    col_upper.push_back(upper);
    objective.push_back(cost);
    integer.push_back(is_integer ? 1 : 0);
    return cols() - 1;
  }
  /// sense: 'L' (<= rhs), 'G' (>= rhs), 'E' (= rhs).
  void add_row(const std::vector<int>& idx, const std::vector<double>& coef, char sense, double rhs) {
    row_col.insert(row_col.end(), idx.begin(), idx.end());
    row_coef.insert(row_coef.end(), coef.begin(), coef.end());
    row_start.push_back(static_cast<CoinBigIndex>(row_col.size()));
    row_lower.push_back(sense == 'L' ? -std::numeric_limits<double>::max() : rhs);
    row_upper.push_back(sense == 'G' ? std::numeric_limits<double>::max() : rhs);
  }
};

/// The LP relaxation in Clp, re-solved (dual simplex, warm) as rows are added.
class LpRelaxation {
 public:
  LpRelaxation(const LinearModel& m, double seconds) : lp_(Clp_newModel()) {
    std::vector<CoinBigIndex> no_entries(m.cols() + 1, 0);
    Clp_setLogLevel(lp_, 0);
    Clp_loadProblem(lp_, m.cols(), 0, no_entries.data(), nullptr, nullptr, m.col_lower.data(), m.col_upper.data(),
                    m.objective.data(), nullptr, nullptr);
    add_rows(m, 0);
    Clp_setMaximumSeconds(lp_, seconds);
    Clp_initialSolve(lp_);
  }
  ~LpRelaxation() { Clp_deleteModel(lp_); }
  LpRelaxation(const LpRelaxation&) = delete;
  LpRelaxation& operator=(const LpRelaxation&) = delete;
  /// Adds the model's rows from `first` on and re-solves.
  void add_rows_and_resolve(const LinearModel& m, int first) {
    add_rows(m, first);
    Clp_dual(lp_, 0);
  }
  bool optimal() { return Clp_isProvenOptimal(lp_) != 0; }
  double objective() { return Clp_objectiveValue(lp_); }
  const double* solution() { return Clp_getColSolution(lp_); }

 private:
  void add_rows(const LinearModel& m, int first) {
    const int n = m.rows() - first;
    if (n <= 0) return;
    std::vector<CoinBigIndex> starts(m.row_start.begin() + first, m.row_start.end());
    for (auto& st : starts) st -= m.row_start[first];
    Clp_addRows(lp_, n, m.row_lower.data() + first, m.row_upper.data() + first, starts.data(),
                m.row_col.data() + m.row_start[first], m.row_coef.data() + m.row_start[first]);
  }
  Clp_Simplex* lp_;
};

/// The compact ILP: item-to-bin binaries and linearized pair products.
PartitionResult solve_compact_ilp(const PartitionProblem& pb, const PartitionResult& start, double time_limit_s,
                                  double relative_gap) {
  // Variables: x[i][b] binary (item i in bin b); s[{i,j}][b] in [0, 1] for pairs of items (which
  // pairs: below) and bins ("both in b", the product x[i][b] x[j][b] linearized); y[p][b] in [0, 1]
  // for patterns of three or more items. Costs (bins a pattern touches other than its home h):
  //   one item i:      w (1 - x[i][h])                                         (no home: w)
  //   two items i, j:  w (2 - x[i][h] - x[j][h] - sum_{b != h} s[{i,j}][b])    (no home: w (2 - sum_b s))
  //   three or more:   w sum_{b != h} y[p][b], y[p][b] >= x[i][b] for i in p
  // The pair cost is exact when s is the product and never below the truth when s <= x (integer x).
  // The LP bound comes from the reformulation-linearization of the bin constraints (a bin holding i
  // holds exactly n - 1 = items / bins - 1 other items, and at most cap - load_i other load):
  //   sum_{j != i} s[{i,j}][b] = (n - 1) x[i][b],   sum_{j != i} load_j s[{i,j}][b] <= (cap - load_i) x[i][b]
  // and from triangle inequalities on z_ij = sum_b s[{i,j}][b] ("same bin"), z_ij + z_jk - z_ik <= 1,
  // separated from the LP solution in rounds before branch and bound starts.
  const auto t_start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(); };
  const int64_t n_items = pb.items, bins = pb.bins, per_bin = n_items / bins;
  LinearModel m;
  std::vector<int> x(n_items * bins);
  for (auto& c : x) c = m.add_col(0, 1, 0, true);
  auto X = [&](int64_t i, int64_t b) { return x[i * bins + b]; };
  // Pair columns: every pair with more than two bins (the linearized count is then an equality and
  // triangles apply); with two bins only the pairs patterns name (the LP is small, and branching on
  // two bins closes the gap fast).
  const bool all_pairs = bins > 2;
  std::vector<int> s(n_items * n_items, -1);  // pair (i < j) -> first of its `bins` columns
  auto add_pair = [&](int64_t i, int64_t j) {
    int& base = s[std::min(i, j) * n_items + std::max(i, j)];
    if (base >= 0) return;
    base = m.cols();
    for (int64_t b = 0; b < bins; ++b) m.add_col(0, 1, 0, false);
  };
  for (int64_t i = 0; i < n_items; ++i)
    for (int64_t j = i + 1; j < n_items; ++j)
      if (all_pairs) add_pair(i, j);
  for (const auto& pat : pb.patterns)
    if (pat.items.size() == 2) add_pair(pat.items[0], pat.items[1]);
  auto has_pair = [&](int64_t i, int64_t j) { return s[std::min(i, j) * n_items + std::max(i, j)] >= 0; };
  auto S = [&](int64_t i, int64_t j, int64_t b) {
    return s[std::min(i, j) * n_items + std::max(i, j)] + static_cast<int>(b);
  };

  double constant = 0;
  std::vector<std::vector<int>> y(pb.patterns.size());
  for (size_t p = 0; p < pb.patterns.size(); ++p) {
    const auto& pat = pb.patterns[p];
    const double w = pat.weight;
    if (pat.items.size() <= 2) {
      constant += w * static_cast<double>(pat.items.size());
      if (pat.home >= 0)
        for (int32_t i : pat.items) m.objective[X(i, pat.home)] -= w;
      if (pat.items.size() == 2)
        for (int64_t b = 0; b < bins; ++b)
          if (b != pat.home) m.objective[S(pat.items[0], pat.items[1], b)] -= w;
      continue;
    }
    y[p].assign(bins, -1);
    for (int64_t b = 0; b < bins; ++b) {
      if (b == pat.home) continue;
      y[p][b] = m.add_col(0, 1, w, false);
      for (int32_t i : pat.items) m.add_row({y[p][b], X(i, b)}, {1.0, -1.0}, 'G', 0.0);
    }
  }

  std::vector<int> idx;
  std::vector<double> coef, loads;
  for (int64_t i = 0; i < n_items; ++i) {  // each item in one bin
    idx.clear();
    for (int64_t b = 0; b < bins; ++b) idx.push_back(X(i, b));
    m.add_row(idx, std::vector<double>(bins, 1.0), 'E', 1.0);
  }
  for (int64_t b = 0; b < bins; ++b) {  // equal counts, load cap
    idx.clear();
    for (int64_t i = 0; i < n_items; ++i) idx.push_back(X(i, b));
    m.add_row(idx, std::vector<double>(n_items, 1.0), 'E', static_cast<double>(per_bin));
    m.add_row(idx, pb.load, 'L', pb.max_bin_load);
  }
  for (int64_t i = 0; i < n_items; ++i)
    for (int64_t j = i + 1; j < n_items; ++j)
      if (has_pair(i, j))
        for (int64_t b = 0; b < bins; ++b) {
          m.add_row({S(i, j, b), X(i, b)}, {1.0, -1.0}, 'L', 0.0);
          m.add_row({S(i, j, b), X(j, b)}, {1.0, -1.0}, 'L', 0.0);
        }
  for (int64_t i = 0; i < n_items; ++i)  // the linearized bin constraints
    for (int64_t b = 0; b < bins; ++b) {
      idx.clear();
      coef.clear();
      loads.clear();
      for (int64_t j = 0; j < n_items; ++j) {
        if (j == i || !has_pair(i, j)) continue;
        idx.push_back(S(i, j, b));
        coef.push_back(1.0);
        loads.push_back(pb.load[j]);
      }
      if (idx.empty()) continue;
      const auto partners = static_cast<int64_t>(idx.size());
      idx.push_back(X(i, b));
      coef.push_back(-static_cast<double>(per_bin - 1));
      loads.push_back(-(pb.max_bin_load - pb.load[i]));
      if (all_pairs) m.add_row(idx, coef, 'E', 0.0);
      else if (partners > per_bin - 1) m.add_row(idx, coef, 'L', 0.0);
      m.add_row(idx, loads, 'L', 0.0);
    }

  // Triangle rounds (more than two bins): for up to 40% of the time, the most violated 4 * items per
  // round. The LP's bound counts only when Clp solved it to optimality.
  double lp_bound = -std::numeric_limits<double>::max();
  if (all_pairs && time_limit_s >= 1.0) {
    LpRelaxation lp(m, 0.4 * time_limit_s);
    std::vector<double> z(n_items * n_items, 0.0);
    struct Triangle {
      double violation;
      int64_t i, j, k;  // z_ij + z_jk - z_ik <= 1
    };
    std::vector<Triangle> violated;
    for (int round = 0; lp.optimal(); ++round) {
      lp_bound = lp.objective() + constant;
      const double* sol = lp.solution();
      for (int64_t i = 0; i < n_items; ++i)
        for (int64_t j = i + 1; j < n_items; ++j) {
          double v = 0;
          for (int64_t b = 0; b < bins; ++b) v += sol[S(i, j, b)];
          z[i * n_items + j] = z[j * n_items + i] = v;
        }
      violated.clear();
      for (int64_t j = 0; j < n_items; ++j)
        for (int64_t i = 0; i < n_items; ++i) {
          if (i == j) continue;
          for (int64_t k = i + 1; k < n_items; ++k) {
            if (k == j) continue;
            const double v = z[i * n_items + j] + z[j * n_items + k] - z[i * n_items + k] - 1;
            if (v > 1e-6) violated.push_back({v, i, j, k});
          }
        }
      if (std::getenv("SWITCHYARD_PLAN_DEBUG"))
        std::fprintf(stderr, "  lp round %d: bound %.4f, %zu triangles violated, %.2f s\n", round, lp_bound,
                     violated.size(), elapsed());
      if (violated.empty() || elapsed() > 0.4 * time_limit_s) break;
      const size_t keep = std::min<size_t>(violated.size(), static_cast<size_t>(4 * n_items));
      std::partial_sort(violated.begin(), violated.begin() + keep, violated.end(),
                        [](const Triangle& a, const Triangle& b) { return a.violation > b.violation; });
      const int first = m.rows();
      for (size_t c = 0; c < keep; ++c) {
        const auto& t = violated[c];
        idx.clear();
        coef.clear();
        for (int64_t b = 0; b < bins; ++b) {
          idx.insert(idx.end(), {S(t.i, t.j, b), S(t.j, t.k, b), S(t.i, t.k, b)});
          coef.insert(coef.end(), {1.0, 1.0, -1.0});
        }
        m.add_row(idx, coef, 'L', 1.0);
      }
      lp.add_rows_and_resolve(m, first);
    }
  }

  Cbc_Model* model = Cbc_newModel();
  {
    // CBC takes the matrix column-major.
    std::vector<CoinBigIndex> col_start(m.cols() + 1, 0);
    for (int c : m.row_col) ++col_start[c + 1];
    for (int c = 0; c < m.cols(); ++c) col_start[c + 1] += col_start[c];
    std::vector<int> col_row(m.row_col.size());
    std::vector<double> col_coef(m.row_col.size());
    std::vector<CoinBigIndex> fill(col_start.begin(), col_start.end() - 1);
    for (int r = 0; r < m.rows(); ++r)
      for (CoinBigIndex e = m.row_start[r]; e < m.row_start[r + 1]; ++e) {
        const CoinBigIndex at = fill[m.row_col[e]]++;
        col_row[at] = r;
        col_coef[at] = m.row_coef[e];
      }
    Cbc_loadProblem(model, m.cols(), m.rows(), col_start.data(), col_row.data(), col_coef.data(), m.col_lower.data(),
                    m.col_upper.data(), m.objective.data(), m.row_lower.data(), m.row_upper.data());
    for (int c = 0; c < m.cols(); ++c)
      if (m.integer[c]) Cbc_setInteger(model, c);
  }
  Cbc_setObjSense(model, 1.0);
  Cbc_setLogLevel(model, 0);
  Cbc_setMaximumSeconds(model, std::max(0.1, time_limit_s - elapsed()));
  // CBC's fraction gap is relative to its objective, which lacks the constant: stop on the absolute
  // gap that is `relative_gap` of the smallest cost there can be.
  const double cost_floor = lp_bound > 0 ? lp_bound : (start.bin_of.empty() ? 0.0 : start.cost);
  if (cost_floor > 0) Cbc_setAllowableGap(model, relative_gap * cost_floor);
  if (!start.bin_of.empty() && pb.feasible(start.bin_of)) {
    idx.clear();
    coef.clear();
    for (int64_t i = 0; i < n_items; ++i)
      for (int64_t b = 0; b < bins; ++b) {
        idx.push_back(X(i, b));
        coef.push_back(start.bin_of[i] == b ? 1.0 : 0.0);
      }
    for (int64_t i = 0; i < n_items; ++i)
      for (int64_t j = i + 1; j < n_items; ++j)
        for (int64_t b = 0; b < bins && has_pair(i, j); ++b) {
          idx.push_back(S(i, j, b));
          coef.push_back(start.bin_of[i] == b && start.bin_of[j] == b ? 1.0 : 0.0);
        }
    for (size_t p = 0; p < pb.patterns.size(); ++p)
      for (int64_t b = 0; b < static_cast<int64_t>(y[p].size()); ++b) {
        if (y[p][b] < 0) continue;
        bool touches = false;
        for (int32_t i : pb.patterns[p].items) touches |= start.bin_of[i] == b;
        idx.push_back(y[p][b]);
        coef.push_back(touches ? 1.0 : 0.0);
      }
    Cbc_setMIPStartI(model, static_cast<int>(idx.size()), idx.data(), coef.data());
  }
  Cbc_solve(model);
  PartitionResult r;
  const double* sol = Cbc_getColSolution(model);
  if (sol != nullptr) {
    r.bin_of.assign(n_items, -1);
    for (int64_t i = 0; i < n_items; ++i)
      for (int64_t b = 0; b < bins; ++b)
        if (sol[X(i, b)] > 0.5) r.bin_of[i] = static_cast<int32_t>(b);
  }
  r.bound = std::max(lp_bound, Cbc_getBestPossibleObjValue(model) + constant);
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

}  // namespace

PartitionResult solve_ilp(const PartitionProblem& pb, const PartitionResult& start, double time_limit_s,
                          double relative_gap) {
  if (pb.bins <= 2) return solve_compact_ilp(pb, start, time_limit_s, relative_gap);
  // More bins: the set-partitioning bound first (it usually proves the start or a better assignment
  // within the gap in a fraction of a second); the compact ILP gets the rest of the time otherwise.
  const auto t_start = std::chrono::steady_clock::now();
  auto sp = solve_set_partition(pb, start, 0.8 * time_limit_s, relative_gap);
  sp.bound = std::min(sp.bound, sp.cost);  // a bound above a known assignment's cost is numerical noise
  if (sp.bound < 0) {
    // No useful bound: the pricing never finished (bins of many items), or stopped before its duals
    // meant anything. The compact model of such a stage is larger still, and CBC's root (LP, triangle
    // rounds, cuts) cannot be interrupted, so it would overrun the time limit many times over. Keep
    // the assignment; costs are >= 0, so 0 is the bound.
    sp.bound = 0;
    return sp;
  }
  if (sp.optimal || (sp.bound > 0 && sp.cost - sp.bound <= relative_gap * sp.bound)) return sp;
  const double left = time_limit_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (left < 0.5) return sp;  // CBC would spend longer than this on the compact model's root alone
  auto r = solve_compact_ilp(pb, sp, left, relative_gap);
  r.bound = std::min(std::max(r.bound, sp.bound), r.cost);
  r.optimal = r.optimal || r.bound >= r.cost - 1e-9 * std::max(1.0, r.cost);
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
  const auto t0 = std::chrono::steady_clock::now();
  r.best = use_ilp ? solve_ilp(pb, r.greedy, time_s, o.relative_gap) : r.greedy;
  const double used_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (std::getenv("SWITCHYARD_PLAN_DEBUG")) {
    std::fprintf(stderr, "stage: %lld items, %lld bins, %zu patterns, feasible start %d, greedy %.4f, ilp %.4f, bound %.4f, "
                 "optimal %d, time %.2f of %.2f s\n", (long long)pb.items, (long long)pb.bins, pb.patterns.size(),
                 (int)pb_in.feasible(r.greedy.bin_of), r.greedy.cost, r.best.cost, r.best.bound, (int)r.best.optimal, used_s,
                 time_s);
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
  return report;
}

/// The plan's objective, and the gap and optimality of the plan against the report's bound.
void finish(PlanReport& report, bool use_ilp) {
  report.objective_plan = 0;
  for (const auto& l : report.layers) report.objective_plan += l.objective;
  if (!use_ilp) return;
  const double slack = report.objective_plan - report.bound;
  report.gap = report.objective_plan > 0 ? slack / report.objective_plan : 0;
  report.ilp_optimal = slack <= 1e-9 * std::max(1.0, report.objective_plan);
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
  report.bound_scope = "each_layer_given_the_previous";
  finish(report, use_ilp);
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
  // ILP time: each stage gets its share of what is left (so time a fast stage leaves goes on), the node
  // stage `inter_node_weight` shares and each rank stage one, as their rows weigh in the objective.
  const double node_share = o.inter_node_weight;
  const double units_per_layer = (nodes > 1 ? node_share : 0.0) + static_cast<double>(nodes);
  double units_left = static_cast<double>(trace.layers.size()) * units_per_layer;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.time_limit_s);
  auto stage_time = [&](double units) {
    const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    const double t = std::max(0.1, left * units / std::max(units, units_left));
    units_left -= units;
    return t;
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
      const auto a = solve_stage(pa, o, use_ilp, use_ilp ? stage_time(node_share) : 0);
      node_greedy = a.greedy.bin_of;
      node_best = a.best.bin_of;
      bound_a = a.best.bound;
    }
    // Stage B: within each node, its experts to its ranks (intra-node rows, home = the source's local rank).
    auto stage_b = [&](const std::vector<int32_t>& node_of_expert, bool ilp, double* bound) {
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
        const auto b = solve_stage(pb, o, ilp, ilp ? stage_time(1.0) : 0);
        if (bound) *bound += b.best.bound;
        for (int64_t i = 0; i < pb.items; ++i) owner[expert_of_item[i]] = n * rpn + b.best.bin_of[i];
      }
      return owner;
    };
    double bound_b = 0;
    const auto owner_greedy = stage_b(node_greedy, false, nullptr);
    const auto owner_best = use_ilp ? stage_b(node_best, true, &bound_b) : owner_greedy;

    const auto rows_contig = predict_rows(layer, contiguous, topo, kind);
    const auto rows_greedy = predict_rows(layer, owner_greedy, topo, kind);
    const auto rows_best = predict_rows(layer, owner_best, topo, kind);
    report.objective_contiguous += weighted(rows_contig, o.inter_node_weight);
    report.objective_greedy += weighted(rows_greedy, o.inter_node_weight);
    if (use_ilp) {
      report.objective_ilp += weighted(rows_best, o.inter_node_weight);
      report.stage_bound += bound_a + bound_b;
      // Valid for every placement: the node stage's bound covers the inter-node rows of any node split;
      // the rank stages' bounds hold only for the node split they were given, unless one node holds
      // all ranks (then stage B is the whole problem). Intra-node rows are otherwise bounded by 0.
      report.bound += nodes > 1 ? bound_a : bound_b;
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
  if (use_ilp) report.stage_gap = report.objective_ilp > 0 ? (report.objective_ilp - report.stage_bound) / report.objective_ilp : 0;
  report.bound_scope = "any_placement";
  finish(report, use_ilp);
  account(report, trace, stats, topo);
  return report;
}

}  // namespace switchyard::parallel
