// Global batches of sequences whose order depends only on (seed, step): any rank count reads the same
// global batch at the same step, and resuming at step s needs nothing but s.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <mutex>
#include <vector>

#include "data/token_source.h"

namespace switchyard::data {

/// Tokens [begin, end) of `source`, cut into non-overlapping windows of seq_len + 1 tokens (input and
/// shifted target). Sequence j of the run (j = step * global_batch + i) is window perm_e[j mod W] of
/// epoch e = j / W, perm_e a Fisher-Yates shuffle seeded by (seed, e).
class BatchSampler {
 public:
  BatchSampler(const TokenSource& source, int64_t begin, int64_t end, int64_t seq_len, int64_t global_batch,
               uint64_t seed, int64_t vocab_size);

  /// Sequences [first, first + count) of global batch `step`: int64 [count, seq_len + 1].
  torch::Tensor batch(int64_t step, int64_t first, int64_t count) const;
  /// Window index of sequence i of global batch `step` (for tests).
  int64_t window_of(int64_t step, int64_t i) const;
  int64_t num_windows() const { return num_windows_; }

 private:
  const TokenSource& source_;
  int64_t begin_, seq_len_, global_batch_, num_windows_, vocab_size_;
  uint64_t seed_;
  mutable std::mutex mutex_;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> cached_perm_;
};

/// Train/validation split of a source: validation is the last `val_fraction` of the tokens.
struct Split {
  int64_t train_begin, train_end, val_begin, val_end;
};
Split split_source(const TokenSource& source, double val_fraction, int64_t seq_len);

}  // namespace switchyard::data
