// Deterministic, rank-count-independent batch order.
#include "data/batch_sampler.h"

#include <random>

#include "core/error.h"

namespace switchyard::data {

BatchSampler::BatchSampler(const TokenSource& source, int64_t begin, int64_t end, int64_t seq_len, int64_t global_batch,
                           uint64_t seed, int64_t vocab_size)
    : source_(source), begin_(begin), seq_len_(seq_len), global_batch_(global_batch),
      num_windows_((end - begin - 1) / seq_len), vocab_size_(vocab_size), seed_(seed) {
  SY_CHECK_AS(DataError, num_windows_ >= 1, source.describe(), ": ", end - begin, " tokens hold no sequence of ",
              seq_len + 1, " tokens (model.seq_len)");
}

int64_t BatchSampler::window_of(int64_t step, int64_t i) const {
  const int64_t j = step * global_batch_ + i;
  const int64_t epoch = j / num_windows_;
  std::lock_guard<std::mutex> lock(mutex_);
  if (epoch != cached_epoch_) {
    cached_perm_.resize(num_windows_);
    for (int64_t w = 0; w < num_windows_; ++w) cached_perm_[w] = w;
    std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch) * 0xBF58476D1CE4E5B9ULL + 7);
    for (int64_t w = num_windows_ - 1; w > 0; --w) std::swap(cached_perm_[w], cached_perm_[rng() % (w + 1)]);
    cached_epoch_ = epoch;
  }
  return cached_perm_[j % num_windows_];
}

torch::Tensor BatchSampler::batch(int64_t step, int64_t first, int64_t count) const {
  auto out = torch::empty({count, seq_len_ + 1}, torch::kInt64);
  auto* p = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    source_.read(begin_ + window_of(step, first + i) * seq_len_, seq_len_ + 1, p + i * (seq_len_ + 1));
  }
  const int64_t max_token = count > 0 ? out.max().item<int64_t>() : 0;
  SY_CHECK_AS(DataError, max_token < vocab_size_ && (count == 0 || out.min().item<int64_t>() >= 0), source_.describe(),
              ": token id ", max_token, " is outside model.vocab_size ", vocab_size_);
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
