// CRC-32C (Castagnoli): checkpoint checksums and TensorBoard record framing.
#pragma once

#include <cstddef>
#include <cstdint>

namespace switchyard::core {

/// CRC-32C of `size` bytes, continuing from `crc` (0 to start).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
/// TensorBoard's masked form: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t size);

}  // namespace switchyard::core
