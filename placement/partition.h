// The staged partition problem of the planner (docs/placement.md) and its solvers: greedy + local
// search (partition.cpp), the CBC ILP (partition_ilp.cpp), the set-partitioning bound by column
// generation (set_partition.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace switchyard::placement {

/// Assign items (experts) to `bins` (nodes, or ranks of one node), exactly items / bins each, each
/// bin's load <= max_bin_load, minimizing sum_p weight_p * |{bins b != home_p touched by items_p}|.
struct PartitionProblem {
  int64_t items = 0, bins = 1;
  std::vector<double> load;  ///< per item
  double max_bin_load = 0;
  struct Pattern {
    std::vector<int32_t> items;
    int32_t home = -1;  ///< -1: every touched bin counts
    double weight = 1;
  };
  std::vector<Pattern> patterns;
  double cost(const std::vector<int32_t>& bin_of) const;
  /// Bin `bin`'s share of the cost when it holds `set`: the weight of patterns (home != bin) meeting it.
  /// cost(bin_of) is the sum of every bin's share.
  double bin_cost(int32_t bin, const std::vector<int32_t>& set) const;
  bool feasible(const std::vector<int32_t>& bin_of) const;
};

struct PartitionResult {
  std::vector<int32_t> bin_of;
  double cost = 0;
  double bound = -1;  ///< the ILP's lower bound (-1: none)
  bool optimal = false;
};

/// Greedy construction (heaviest co-activated items first, into the bin that adds least cost) then
/// pairwise-swap local search; deterministic for a seed.
PartitionResult solve_greedy(const PartitionProblem& problem, uint64_t seed);
/// The ILP through CBC, started from `start`; throws when CBC is not built in.
PartitionResult solve_ilp(const PartitionProblem& problem, const PartitionResult& start, double time_limit_s,
                          double relative_gap);
bool ilp_available();

/// The set-partitioning relaxation (a column is one bin's whole content) by column generation, for
/// more than two bins: its Lagrangian bound, and the best assignment among the generated contents
/// (restricted master in CBC) or `start`, whichever costs less. It stops early once `start` is within
/// `relative_gap` of the bound. Throws when CBC is not built in.
PartitionResult solve_set_partition(const PartitionProblem& problem, const PartitionResult& start, double time_limit_s,
                                    double relative_gap);

/// The pricing of the column generation, exposed for tests: the least bin_cost(bin, S) - sum_{i in S}
/// price[i] over contents S of items / bins items within the load cap, by branch and bound. Exact for
/// patterns of one or two items; with larger patterns a lower bound. `complete` is false when the search
/// stopped at its node limit.
struct BinPricing {
  double min_value = 0;
  std::vector<int32_t> best_set;  ///< sorted; empty when no content fits the cap
  bool complete = true;
};
BinPricing price_bin(const PartitionProblem& problem, int32_t bin, const std::vector<double>& price);

}  // namespace switchyard::placement
