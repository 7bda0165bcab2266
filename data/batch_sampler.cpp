// Deterministic, rank-count-independent batch order.
#include "data/batch_sampler.h"

#include <random>

#include "core/error.h"

namespace switchyard::data {

BatchSampler::BatchSampler(std::vector<Part> parts, int64_t seq_len, int64_t global_batch, uint64_t seed,
                           int64_t vocab_size)
    : parts_(std::move(parts)), seq_len_(seq_len), global_batch_(global_batch), vocab_size_(vocab_size), seed_(seed) {
  SY_ASSERT(!parts_.empty(), "BatchSampler: no parts");
  double total = 0;
  for (const auto& p : parts_) {
    const int64_t windows = (p.end - p.begin - 1) / seq_len;
    SY_CHECK_AS(DataError, windows >= 1, p.source->describe(), ": ", p.end - p.begin, " tokens hold no sequence of ",
                seq_len + 1, " tokens (model.seq_len)");
    SY_ASSERT(p.weight > 0, "BatchSampler: a part of weight ", p.weight);
    part_windows_.push_back(windows);
    num_windows_ += windows;
    total += p.weight;
  }
  for (const auto& p : parts_) weights_.push_back(p.weight / total);
  walk_counts_.assign(parts_.size(), 0);
  block_counts_.push_back(walk_counts_);
  perms_.resize(parts_.size());
}

std::pair<int64_t, int64_t> BatchSampler::locate(int64_t j) const {
  if (parts_.size() == 1) return {0, j};
  if (j < walked_) {  // back to the block start at or before j
    const int64_t block = j / kBlock;
    walked_ = block * kBlock;
    walk_counts_ = block_counts_.at(static_cast<size_t>(block));
  }
  for (;;) {
    // The part greedy blending gives sequence `walked_`.
    size_t best = 0;
    double best_error = -1e300;
    for (size_t d = 0; d < parts_.size(); ++d) {
      const double error = weights_[d] * static_cast<double>(walked_ + 1) - static_cast<double>(walk_counts_[d]);
      if (error > best_error) {
        best_error = error;
        best = d;
      }
    }
    const int64_t index = walk_counts_[best]++;
    ++walked_;
    if (walked_ % kBlock == 0 && static_cast<int64_t>(block_counts_.size()) == walked_ / kBlock) {
      block_counts_.push_back(walk_counts_);
    }
    if (walked_ - 1 == j) return {static_cast<int64_t>(best), index};
  }
}

std::pair<int64_t, int64_t> BatchSampler::window_of(int64_t step, int64_t i) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto [part, k] = locate(step * global_batch_ + i);
  const int64_t windows = part_windows_[part];
  const int64_t epoch = k / windows;
  auto& perm = perms_[part];
  if (epoch != perm.epoch) {
    perm.order.resize(windows);
    for (int64_t w = 0; w < windows; ++w) perm.order[w] = w;
    // Part 0 keeps the seeding of the single-part sampler (its order is unchanged by blending code).
    std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch) * 0xBF58476D1CE4E5B9ULL + 7 +
                        static_cast<uint64_t>(part) * 0x94D049BB133111EBULL);
    for (int64_t w = windows - 1; w > 0; --w) std::swap(perm.order[w], perm.order[rng() % (w + 1)]);
    perm.epoch = epoch;
  }
  return {part, perm.order[k % windows]};
}

torch::Tensor BatchSampler::batch(int64_t step, int64_t first, int64_t count) const {
  auto out = torch::empty({count, seq_len_ + 1}, torch::kInt64);
  auto* p = out.data_ptr<int64_t>();
  std::vector<int64_t> part_of(count);
  for (int64_t i = 0; i < count; ++i) {
    const auto [part, window] = window_of(step, first + i);
    part_of[i] = part;
    parts_[part].source->read(parts_[part].begin + window * seq_len_, seq_len_ + 1, p + i * (seq_len_ + 1));
  }
  if (count == 0 || (out.max().item<int64_t>() < vocab_size_ && out.min().item<int64_t>() >= 0)) return out;
  for (int64_t i = 0; i < count; ++i) {  // name the source of the first bad row
    const auto row = out[i];
    const int64_t bad = row.max().item<int64_t>() >= vocab_size_ ? row.max().item<int64_t>() : row.min().item<int64_t>();
    SY_CHECK_AS(DataError, bad < vocab_size_ && bad >= 0, parts_[part_of[i]].source->describe(), ": token id ", bad,
                " is outside model.vocab_size ", vocab_size_);
  }
  return out;
}

Split split_source(const TokenSource& source, double val_fraction, int64_t seq_len) {
  const int64_t n = source.num_tokens();
  const int64_t val = std::max<int64_t>(seq_len + 1, static_cast<int64_t>(static_cast<double>(n) * val_fraction));
  SY_CHECK_AS(DataError, n - val >= seq_len + 1, source.describe(), ": too small for a train and a validation split of ",
              seq_len + 1, "-token sequences");
  return {0, n - val, n - val, n};
}

}  // namespace switchyard::data
