// Global batches of sequences whose order depends only on (seed, step): any rank count reads the same
// global batch at the same step, and resuming at step s needs nothing but s.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "data/token_source.h"

namespace switchyard::data {

/// Global batches of windows of seq_len + 1 tokens (input and shifted target) drawn from one or
/// more parts: token ranges [begin, end) of sources, each with a weight. Sequence j of the run
/// (j = step * global_batch + i) goes to the part Megatron's greedy blending picks (the part d
/// maximizing weight_d * (j + 1) - sequences already given to d; the lowest d on a tie), so every
/// prefix of the run holds each part's share to within one sequence. It is that part's k-th sequence,
/// window perm_{d,e}[k mod W_d] of its epoch e = k / W_d, perm a Fisher-Yates shuffle seeded by
/// (seed, d, e). One part of weight 1 is the plain shuffled order.
class BatchSampler {
 public:
  struct Part {
    const TokenSource* source;
    int64_t begin, end;
    double weight = 1.0;
  };
  BatchSampler(std::vector<Part> parts, int64_t seq_len, int64_t global_batch, uint64_t seed, int64_t vocab_size);
  /// One part: [begin, end) of `source`.
  BatchSampler(const TokenSource& source, int64_t begin, int64_t end, int64_t seq_len, int64_t global_batch,
               uint64_t seed, int64_t vocab_size)
      : BatchSampler({{&source, begin, end, 1.0}}, seq_len, global_batch, seed, vocab_size) {}

  /// Sequences [first, first + count) of global batch `step`: int64 [count, seq_len + 1].
  torch::Tensor batch(int64_t step, int64_t first, int64_t count) const;
  /// Part and window index of sequence i of global batch `step` (for tests).
  std::pair<int64_t, int64_t> window_of(int64_t step, int64_t i) const;
  /// Windows of every part (a changed corpus changes it: checkpoints record it).
  int64_t num_windows() const { return num_windows_; }

 private:
  /// Part of run sequence j and its index within the part (the caller holds mutex_).
  std::pair<int64_t, int64_t> locate(int64_t j) const;

  std::vector<Part> parts_;
  std::vector<double> weights_;  ///< normalized
  std::vector<int64_t> part_windows_;
  int64_t seq_len_, global_batch_, num_windows_ = 0, vocab_size_;
  uint64_t seed_;
  mutable std::mutex mutex_;
  // Greedy blending walked forward from the last sequence located (training reads in order), with
  // the counts saved every kBlock sequences for a jump back.
  static constexpr int64_t kBlock = 4096;
  mutable int64_t walked_ = 0;                      ///< sequences assigned so far by the walk
  mutable std::vector<int64_t> walk_counts_;        ///< per part, after `walked_` sequences
  mutable std::vector<std::vector<int64_t>> block_counts_;  ///< per block start
  struct Permutation {
    int64_t epoch = -1;
    std::vector<int64_t> order;
  };
  mutable std::vector<Permutation> perms_;
};

/// Train/validation split of a source: validation is the last `val_fraction` of the tokens.
struct Split {
  int64_t train_begin, train_end, val_begin, val_end;
};
Split split_source(const TokenSource& source, double val_fraction, int64_t seq_len);

}  // namespace switchyard::data
