// The set-partitioning relaxation of the partition problem, solved by column generation
// (docs/placement.md, "Rank stage"). A column is one bin's whole content; its cost is that bin's
// share of the objective, which is separable by bin:
//   cost(assignment) = sum_b cost_b(S_b),  cost_b(S) = sum over patterns p with home != b of w_p [p meets S].
// The master LP (Clp) picks a convex combination of contents per bin covering each item once; new
// contents come from an exact branch-and-bound pricing. Its Lagrangian bound (LP value plus each bin's
// most negative reduced cost) holds at every iteration and is far stronger than the compact LP's for
// bins of a few items (the compact LP spreads items fractionally; columns are whole bins).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <set>
#include <numeric>

#include "core/build_info.h"
#include "core/error.h"
#include "placement/partition.h"

#if SWITCHYARD_HAS_CBC
#include <coin/Cbc_C_Interface.h>
#include <coin/Clp_C_Interface.h>
#endif

namespace switchyard::placement {

namespace {

/// The bin's cost as a quadratic over the content's indicator x: sum_i a_i x_i - sum_{i<j} q_ij x_i x_j
/// (a_i: weight of the bin's patterns holding i; q_ij: of those holding i and j). Exact for patterns of
/// one or two items; for larger ones a lower bound (Bonferroni's inequality), so the pricing stays a
/// valid bound.
struct BinQuadratic {
  std::vector<double> a, q;  // q row-major [items, items], zero diagonal
};

BinQuadratic bin_quadratic(const PartitionProblem& pb, int32_t bin) {
  const int64_t n = pb.items;
  BinQuadratic f{std::vector<double>(n, 0.0), std::vector<double>(n * n, 0.0)};
  for (const auto& p : pb.patterns) {
    if (p.home == bin) continue;
    for (size_t u = 0; u < p.items.size(); ++u) {
      f.a[p.items[u]] += p.weight;
      for (size_t v = u + 1; v < p.items.size(); ++v) {
        f.q[p.items[u] * n + p.items[v]] += p.weight;
        f.q[p.items[v] * n + p.items[u]] += p.weight;
      }
    }
  }
  return f;
}

/// Branch and bound over contents of `per_bin` items within the load cap, minimizing
/// sum_{i in S} v_i - sum_{i<j in S} q_ij (v = a - price). It keeps the `keep` best contents below
/// `threshold`; the bound of a node: its value plus the r smallest of v_j - (q to the chosen) - half the
/// r - 1 largest q_jl (each future pair's saving is split between its two items).
class ContentSearch {
 public:
  using Clock = std::chrono::steady_clock;
  ContentSearch(const PartitionProblem& pb, const BinQuadratic& f, const std::vector<double>& price)
      : n_(static_cast<int>(pb.items)), per_bin_(static_cast<int>(pb.items / pb.bins)), cap_(pb.max_bin_load),
        load_(pb.load), q_(f.q), v_(n_), q_chosen_(n_, 0.0) {
    // Items by promise (least v minus half their largest pair savings first), so good contents come early.
    std::vector<double> row(n_), promise(n_);
    for (int j = 0; j < n_; ++j) {
      v_[j] = f.a[j] - price[j];
      row.assign(q_.begin() + static_cast<int64_t>(j) * n_, q_.begin() + static_cast<int64_t>(j + 1) * n_);
      std::partial_sort(row.begin(), row.begin() + (per_bin_ - 1), row.end(), std::greater<>());
      promise[j] = v_[j] - 0.5 * std::accumulate(row.begin(), row.begin() + (per_bin_ - 1), 0.0);
    }
    order_.resize(n_);
    std::iota(order_.begin(), order_.end(), 0);
    std::sort(order_.begin(), order_.end(), [&](int x, int y) { return promise[x] < promise[y]; });
    // top_q_[(pos * n + j) * per_bin + m]: the m largest q_jl summed over the items still to come at
    // position pos (order_[pos..n), l != j): the most item j can still save with m more items.
    top_q_.assign(static_cast<size_t>(n_) * n_ * per_bin_, 0.0);
    for (int pos = 0; pos < n_; ++pos)
      for (int j = 0; j < n_; ++j) {
        row.clear();
        for (int t = pos; t < n_; ++t)
          if (order_[t] != j) row.push_back(q_[static_cast<int64_t>(j) * n_ + order_[t]]);
        const int m_max = std::min<int>(per_bin_ - 1, static_cast<int>(row.size()));
        std::partial_sort(row.begin(), row.begin() + m_max, row.end(), std::greater<>());
        double* top = &top_q_[(static_cast<size_t>(pos) * n_ + j) * per_bin_];
        for (int m = 1; m < per_bin_; ++m) top[m] = top[m - 1] + (m <= m_max ? row[m - 1] : 0.0);
      }
  }

  struct Found {
    double value;
    std::vector<int32_t> set;
  };
  /// Runs the search; false when it stopped at the node limit or the deadline (then `found` is not
  /// proven best).
  bool run(double threshold, size_t keep, int64_t node_limit, Clock::time_point deadline = Clock::time_point::max()) {
    threshold_ = threshold;
    keep_ = keep;
    node_limit_ = node_limit;
    deadline_ = deadline;
    nodes_ = 0;
    complete_ = true;
    found_.clear();
    chosen_.clear();
    dfs(0, 0.0, 0.0);
    std::sort(found_.begin(), found_.end(), [](const Found& x, const Found& y) { return x.value < y.value; });
    return complete_;
  }
  const std::vector<Found>& found() const { return found_; }
  int64_t nodes() const { return nodes_; }

 private:
  double prune_at() const {
    if (found_.size() < keep_) return threshold_;
    return std::min(threshold_, found_.front().value);  // found_ is a max-heap while searching
  }
  void record(double value) {
    auto worse = [](const Found& x, const Found& y) { return x.value < y.value; };
    if (found_.size() == keep_) {
      std::pop_heap(found_.begin(), found_.end(), worse);
      found_.pop_back();
    }
    std::vector<int32_t> set(chosen_.begin(), chosen_.end());
    std::sort(set.begin(), set.end());
    found_.push_back({value, std::move(set)});
    std::push_heap(found_.begin(), found_.end(), worse);
  }
  void dfs(int pos, double value, double load) {
    if (++nodes_ > node_limit_ || ((nodes_ & 0xffff) == 0 && Clock::now() > deadline_)) {
      complete_ = false;
      return;
    }
    const int r = per_bin_ - static_cast<int>(chosen_.size());
    if (r == 0) {
      if (value < prune_at() - 1e-12) record(value);
      return;
    }
    if (n_ - pos < r) return;
    scratch_.clear();
    for (int t = pos; t < n_; ++t) {
      const int j = order_[t];
      scratch_.push_back(v_[j] - q_chosen_[j] - 0.5 * top_q_[(static_cast<size_t>(pos) * n_ + j) * per_bin_ + r - 1]);
    }
    std::nth_element(scratch_.begin(), scratch_.begin() + (r - 1), scratch_.end());
    double bound = value;
    for (int t = 0; t < r; ++t) bound += scratch_[t];
    if (bound >= prune_at() - 1e-12) return;
    for (int t = pos; t <= n_ - r && complete_; ++t) {
      const int j = order_[t];
      if (load + load_[j] > cap_ * (1 + 1e-9)) continue;
      const double* qj = q_.data() + static_cast<int64_t>(j) * n_;
      chosen_.push_back(j);
      const double next = value + v_[j] - q_chosen_[j];
      for (int l = 0; l < n_; ++l) q_chosen_[l] += qj[l];
      dfs(t + 1, next, load + load_[j]);
      for (int l = 0; l < n_; ++l) q_chosen_[l] -= qj[l];
      chosen_.pop_back();
    }
  }

  int n_, per_bin_;
  double cap_;
  const std::vector<double>& load_;
  const std::vector<double>& q_;
  std::vector<double> v_, q_chosen_, top_q_, scratch_;
  std::vector<int> order_, chosen_;
  double threshold_ = 0;
  size_t keep_ = 1;
  int64_t node_limit_ = 0, nodes_ = 0;
  Clock::time_point deadline_;
  bool complete_ = true;
  std::vector<Found> found_;
};

constexpr int64_t kPricingNodeLimit = 4000000;

}  // namespace

BinPricing price_bin(const PartitionProblem& pb, int32_t bin, const std::vector<double>& price) {
  const auto f = bin_quadratic(pb, bin);
  ContentSearch search(pb, f, price);
  BinPricing out;
  out.complete = search.run(std::numeric_limits<double>::infinity(), 1, kPricingNodeLimit);
  if (!search.found().empty()) {
    out.min_value = search.found().front().value;
    out.best_set = search.found().front().set;
  }
  return out;
}

#if SWITCHYARD_HAS_CBC

namespace {

/// `seconds` as the steady clock's duration (for deadlines).
std::chrono::steady_clock::duration clock_seconds(double seconds) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

/// A master column: bin `bin` holds `set` (sorted) at `cost` = bin_cost(bin, set).
struct Column {
  int32_t bin;
  std::vector<int32_t> set;
  double cost;
};

/// Columns in the packed column-major form Clp and CBC load: a column covers its items' rows (0 ..
/// items - 1) and its bin's row (items + bin), each with coefficient 1.
struct ColumnArrays {
  std::vector<double> cost, coef;
  std::vector<CoinBigIndex> start{0};
  std::vector<int> rows;
  void append(const Column& c, int n_items) {
    cost.push_back(c.cost);
    rows.insert(rows.end(), c.set.begin(), c.set.end());
    rows.push_back(n_items + c.bin);
    coef.resize(rows.size(), 1.0);
    start.push_back(static_cast<CoinBigIndex>(rows.size()));
  }
  int count() const { return static_cast<int>(cost.size()); }
};

}  // namespace

PartitionResult solve_set_partition(const PartitionProblem& pb, const PartitionResult& start, double time_limit_s,
                                    double relative_gap) {
  const auto t_start = std::chrono::steady_clock::now();
  // Column generation gets 75% of the time; the restricted master's integer program the rest.
  const double cg_limit_s = 0.75 * time_limit_s;
  const auto deadline = t_start + clock_seconds(cg_limit_s);
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(); };
  const bool debug = std::getenv("SWITCHYARD_PLAN_DEBUG") != nullptr;
  const int n_items = static_cast<int>(pb.items), bins = static_cast<int>(pb.bins);
  const int rows = n_items + bins;  // item i covered once; bin b gets one content
  const bool start_feasible = !start.bin_of.empty() && pb.feasible(start.bin_of);

  // Columns: (bin, sorted content), each once. Artificial columns (one per row, a cost above any
  // assignment's) keep the master feasible before real columns cover every row.
  std::vector<Column> columns;
  std::set<std::pair<int32_t, std::vector<int32_t>>> seen;
  double big = 1;
  for (const auto& p : pb.patterns) big += p.weight * static_cast<double>(bins);

  Clp_Simplex* lp = Clp_newModel();
  Clp_setLogLevel(lp, 0);
  {
    std::vector<CoinBigIndex> start_idx(rows + 1);
    std::vector<int> row_idx(rows);
    std::vector<double> ones(rows, 1.0), lower(rows, 0.0), upper(rows, std::numeric_limits<double>::max()),
        cost(rows, big), row_rhs(rows, 1.0);
    for (int r = 0; r <= rows; ++r) start_idx[r] = r;
    std::iota(row_idx.begin(), row_idx.end(), 0);
    Clp_loadProblem(lp, rows, rows, start_idx.data(), row_idx.data(), ones.data(), lower.data(), upper.data(),
                    cost.data(), row_rhs.data(), row_rhs.data());
  }
  // Stages (bin, set) at `cost` for the LP unless present or over the load cap; true when staged.
  ColumnArrays staged;
  auto stage_column = [&](int32_t b, const std::vector<int32_t>& set, double cost) {
    double load = 0;
    for (int32_t i : set) load += pb.load[i];
    if (load > pb.max_bin_load * (1 + 1e-9)) return false;
    if (!seen.emplace(b, set).second) return false;
    columns.push_back({b, set, cost});
    staged.append(columns.back(), n_items);
    return true;
  };
  auto flush_columns = [&] {
    const int count = staged.count();
    if (count == 0) return;
    std::vector<double> lower(count, 0.0), upper(count, std::numeric_limits<double>::max());
    Clp_addColumns(lp, count, lower.data(), upper.data(), staged.cost.data(), staged.start.data(), staged.rows.data(),
                   staged.coef.data());
    staged = ColumnArrays();
  };
  // The start's contents, each offered to every bin.
  std::vector<std::vector<int32_t>> start_sets(bins);
  if (!start.bin_of.empty())
    for (int i = 0; i < n_items; ++i) start_sets[start.bin_of[i]].push_back(i);
  for (const auto& set : start_sets)
    if (static_cast<int64_t>(set.size()) == pb.items / pb.bins)
      for (int b = 0; b < bins; ++b) stage_column(b, set, pb.bin_cost(b, set));
  flush_columns();

  std::vector<BinQuadratic> quadratic;
  for (int b = 0; b < bins; ++b) quadratic.push_back(bin_quadratic(pb, b));
  // Dual smoothing (Wentges): price at a point between the LP's duals and the duals of the best
  // Lagrangian bound so far (the master is degenerate: its own duals jump and the bound stalls). A
  // price that finds no column the LP can use ("mispricing") is retried at the LP's duals; at those, no
  // column with a negative reduced cost means the LP is optimal over every content.
  double bound = -std::numeric_limits<double>::max();
  std::vector<double> center;  // duals of the best bound
  const double smoothing = 0.7;
  bool converged = false;
  int iteration = 0;
  std::vector<double> duals(rows), at(rows);
  int64_t total_nodes = 0;
  double lp_s = 0;
  for (; elapsed() < cg_limit_s; ++iteration) {
    const double t_lp = elapsed();
    Clp_primal(lp, 0);
    lp_s += elapsed() - t_lp;
    if (Clp_isProvenOptimal(lp) == 0) break;
    const double* lp_dual = Clp_dualRowSolution(lp);
    duals.assign(lp_dual, lp_dual + rows);
    bool complete = true;
    int added = 0;
    for (double alpha : {center.empty() ? 0.0 : smoothing, 0.0}) {
      for (int r = 0; r < rows; ++r) at[r] = alpha * (center.empty() ? 0.0 : center[r]) + (1 - alpha) * duals[r];
      const std::vector<double> price(at.begin(), at.begin() + n_items);
      // Lagrangian bound at these duals: their sum plus, per bin, its least reduced cost (the pricing is
      // exact, or a lower bound, so the sum is a bound whatever the duals).
      double lagrangian = std::accumulate(at.begin(), at.end(), 0.0);
      for (int b = 0; b < bins && complete; ++b) {
        ContentSearch search(pb, quadratic[b], price);
        // One search may take a fifth of the column generation's time: bins of many items can make the
        // exact pricing too long, and the stage then keeps its assignment (solve_ilp).
        const auto search_deadline = std::min(deadline, std::chrono::steady_clock::now() + clock_seconds(0.2 * cg_limit_s));
        complete = search.run(at[n_items + b] - 1e-9, 8, kPricingNodeLimit, search_deadline);
        total_nodes += search.nodes();
        if (!search.found().empty()) lagrangian += search.found().front().value - at[n_items + b];
        for (const auto& f : search.found())
          for (int b2 = 0; b2 < bins; ++b2) {  // a good content for one bin is often good for another
            const double cost = pb.bin_cost(b2, f.set);
            double reduced = cost - duals[n_items + b2];
            for (int32_t i : f.set) reduced -= duals[i];
            if (reduced < -1e-9 && stage_column(b2, f.set, cost)) ++added;
          }
      }
      if (!complete) break;
      if (lagrangian > bound) {
        bound = lagrangian;
        center = at;
      }
      if (added > 0 || alpha == 0.0) break;
    }
    if (debug && iteration % 10 == 0)
      std::fprintf(stderr, "  colgen %d: lp %.5f, bound %.5f, columns %zu, %.2f s\n", iteration, Clp_objectiveValue(lp),
                   bound, columns.size(), elapsed());
    if (!complete) break;
    if (added == 0) {
      converged = true;
      break;
    }
    if (start_feasible && start.cost - bound <= relative_gap * bound) break;  // the start is good enough
    flush_columns();
  }
  flush_columns();
  if (debug)
    std::fprintf(stderr, "  colgen end: %d iterations, converged %d, lp %.5f, bound %.5f, columns %zu, %.2f s (lp %.2f s, %lld nodes)\n",
                 iteration, static_cast<int>(converged), Clp_objectiveValue(lp),
                 bound > -std::numeric_limits<double>::max() ? bound : -1.0, columns.size(), elapsed(), lp_s,
                 static_cast<long long>(total_nodes));
  Clp_deleteModel(lp);

  PartitionResult r = start;
  r.optimal = false;
  r.bound = bound > -std::numeric_limits<double>::max() ? bound : -1;
  // An assignment from the generated columns: the restricted master as an integer program in CBC.
  if (!columns.empty() && elapsed() < time_limit_s) {
    const int cols = static_cast<int>(columns.size());
    ColumnArrays all;
    for (const auto& c : columns) all.append(c, n_items);
    std::vector<double> lower(cols, 0.0), upper(cols, 1.0), row_rhs(rows, 1.0);
    Cbc_Model* ip = Cbc_newModel();
    Cbc_loadProblem(ip, cols, rows, all.start.data(), all.rows.data(), all.coef.data(), lower.data(), upper.data(),
                    all.cost.data(), row_rhs.data(), row_rhs.data());
    for (int c = 0; c < cols; ++c) Cbc_setInteger(ip, c);
    Cbc_setLogLevel(ip, 0);
    Cbc_setMaximumSeconds(ip, std::max(0.05, time_limit_s - elapsed()));
    Cbc_solve(ip);
    const double* sol = Cbc_getColSolution(ip);
    if (sol != nullptr && Cbc_getNumCols(ip) == cols) {
      std::vector<int32_t> bin_of(n_items, -1);
      for (int c = 0; c < cols; ++c)
        if (sol[c] > 0.5)
          for (int32_t i : columns[c].set) bin_of[i] = columns[c].bin;
      if (std::find(bin_of.begin(), bin_of.end(), -1) == bin_of.end() && pb.feasible(bin_of)) {
        const double c = pb.cost(bin_of);
        if (r.bin_of.empty() || !pb.feasible(r.bin_of) || c < r.cost - 1e-12) {
          r.bin_of = bin_of;
          r.cost = c;
        }
      }
    }
    Cbc_deleteModel(ip);
  }
  if (!r.bin_of.empty() && pb.feasible(r.bin_of)) {
    r.bound = std::min(r.bound, r.cost);
    r.optimal = r.bound >= r.cost - 1e-9 * std::max(1.0, r.cost);
  }
  return r;
}

#else

PartitionResult solve_set_partition(const PartitionProblem&, const PartitionResult&, double, double) {
  throw UsageError("the set-partitioning bound needs COIN-OR Clp/CBC (install coinor-libcbc-dev and rebuild)");
}

#endif

}  // namespace switchyard::placement
