// Shapes the fused routing kernels take (moe_kernels.cu); larger ones take the ATen path. Kept out of
// moe_kernels.h so that the .cu file need not parse the LibTorch frontend.
#pragma once

#include <cstdint>

namespace switchyard::modules::kernels {

/// softmax_topk: experts spread over a warp's lanes, at most 8 per lane; picks kept one per lane.
constexpr int64_t kSoftmaxTopKMaxExperts = 256;
constexpr int64_t kSoftmaxTopKMaxK = 32;
/// The counting sort of slots: per-expert counters and a warp-by-expert table in shared memory.
constexpr int64_t kCountingSortMaxExperts = 1024;

}  // namespace switchyard::modules::kernels
