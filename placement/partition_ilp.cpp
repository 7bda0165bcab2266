// The partition problem as a mixed-integer program solved by COIN-OR CBC (its LP relaxation in Clp,
// tightened by separated cuts); more than two bins start from the set-partitioning bound.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "core/build_info.h"
#include "core/error.h"
#include "placement/partition.h"

#if SWITCHYARD_HAS_CBC
#include <coin/Cbc_C_Interface.h>
#include <coin/Clp_C_Interface.h>
#endif

namespace switchyard::placement {

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

}  // namespace switchyard::placement
