// safetensors reading (mapped, every field checked against the file) and writing.
#include "interop/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/file_io.h"

namespace switchyard::interop {
namespace {

using json = nlohmann::json;

/// Header bytes the reader accepts (the reference implementation's limit is 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

const std::pair<const char*, torch::ScalarType> kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kHalf},  {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16}, {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

}  // namespace

std::string safetensors_dtype(torch::ScalarType type) {
  for (const auto& [name, t] : kDtypes) {
    if (t == type) return name;
  }
  throw DataError(std::string("safetensors: no dtype for ") + c10::toString(type));
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const auto fail = [&](const std::string& why) { throw DataError(path + ": " + why); };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(std::string("cannot open (") + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("not a regular file");
  }
  map_bytes_ = static_cast<size_t>(st.st_size);
  if (map_bytes_ < 8) {
    ::close(fd);
    fail("not a safetensors file (" + std::to_string(map_bytes_) + " bytes, shorter than the header length)");
  }
  map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail(std::string("cannot map (") + std::strerror(errno) + ")");
  }
  try {
    const auto* bytes = static_cast<const unsigned char*>(map_);
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | bytes[i];
    if (header_bytes > kMaxHeaderBytes || header_bytes > map_bytes_ - 8) {
      fail("bad header length " + std::to_string(header_bytes) + " (the file has " + std::to_string(map_bytes_) + " bytes)");
    }
    const char* header_text = static_cast<const char*>(map_) + 8;
    const json header = json::parse(header_text, header_text + header_bytes, nullptr, /*allow_exceptions=*/false);
    if (!header.is_object()) fail("bad header: not a JSON object");
    data_ = header_text + header_bytes;
    const uint64_t data_bytes = map_bytes_ - 8 - header_bytes;
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const auto& item : header.items()) {
      const std::string name = item.key();  // named, not a structured binding: the lambdas below capture it
      const json& value = item.value();
      if (name == "__metadata__") {
        if (!value.is_object()) fail("bad header: __metadata__ is not an object");
        for (const auto& [key, text] : value.items()) {
          if (!text.is_string()) fail("bad header: __metadata__." + key + " is not a string");
          metadata_[key] = text.get<std::string>();
        }
        continue;
      }
      const auto bad = [&](const std::string& why) { fail("tensor " + name + ": " + why); };
      if (!value.is_object()) bad("not an object");
      const auto dtype = value.find("dtype");
      const auto shape = value.find("shape");
      const auto offsets = value.find("data_offsets");
      if (dtype == value.end() || !dtype->is_string()) bad("missing dtype");
      if (shape == value.end() || !shape->is_array()) bad("missing shape");
      if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2) bad("missing data_offsets [begin, end]");
      Entry e;
      const auto dtype_name = dtype->get<std::string>();
      const auto known = std::find_if(std::begin(kDtypes), std::end(kDtypes),
                                      [&](const auto& d) { return dtype_name == d.first; });
      if (known == std::end(kDtypes)) bad("unsupported dtype '" + dtype_name + "'");
      e.dtype = known->second;
      const uint64_t element = c10::elementSize(e.dtype);
      uint64_t numel = 1;
      for (const auto& d : *shape) {
        if (!d.is_number_unsigned()) bad("shape " + shape->dump() + " is not a list of sizes");
        const uint64_t n = d.get<uint64_t>();
        if (n != 0 && numel > data_bytes / n) bad("shape " + shape->dump() + " needs more bytes than the file has");
        numel *= n;
        e.shape.push_back(static_cast<int64_t>(n));
      }
      for (const auto& o : *offsets) {
        if (!o.is_number_unsigned()) bad("data_offsets " + offsets->dump() + " are not byte offsets");
      }
      const uint64_t begin = (*offsets)[0].get<uint64_t>(), end = (*offsets)[1].get<uint64_t>();
      if (begin > end || end > data_bytes) {
        bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] past the end of the data (" +
            std::to_string(data_bytes) + " bytes)");
      }
      if (end - begin != numel * element) {
        bad("data_offsets cover " + std::to_string(end - begin) + " bytes, shape " + shape->dump() + " of " + dtype_name +
            " needs " + std::to_string(numel * element));
      }
      e.begin = static_cast<int64_t>(begin);
      e.end = static_cast<int64_t>(end);
      ranges.emplace_back(e.begin, e.end);
      entries_.emplace(name, std::move(e));
    }
    // The tensors tile the data section: no byte shared, none left over (as the reference reader).
    std::sort(ranges.begin(), ranges.end());
    int64_t covered = 0;
    for (const auto& [begin, end] : ranges) {
      if (begin != covered) fail("bad header: the tensors' bytes " + std::string(begin < covered ? "overlap" : "leave a gap") + " at byte " + std::to_string(begin));
      covered = end;
    }
    if (static_cast<uint64_t>(covered) != data_bytes) {
      fail("bad header: " + std::to_string(data_bytes - covered) + " bytes after the last tensor");
    }
  } catch (...) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_bytes_);
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const auto it = entries_.find(name);
  SY_CHECK_AS(DataError, it != entries_.end(), path_, ": no tensor ", name);
  const auto& e = it->second;
  auto t = torch::empty(e.shape, torch::dtype(e.dtype));
  std::memcpy(t.data_ptr(), data_ + e.begin, static_cast<size_t>(e.end - e.begin));
  return t;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t n = static_cast<uint64_t>(c.numel()) * c.element_size();
    header[name] = {{"dtype", safetensors_dtype(c.scalar_type())}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    contiguous.push_back(std::move(c));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  bytes += text;
  bytes.reserve(bytes.size() + offset);
  for (const auto& c : contiguous) bytes.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  core::write_file_atomically(path, bytes);
}

}  // namespace switchyard::interop
