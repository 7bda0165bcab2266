// Byte-string collectives over any Communicator.
#include "parallel/communicator.h"

#include <cstring>

namespace switchyard::parallel {

std::string broadcast_bytes(Communicator& comm, const std::string& bytes, int root) {
  auto len = torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kInt64);
  comm.broadcast(len, root);
  const int64_t n = len.item<int64_t>();
  auto buf = torch::zeros({std::max<int64_t>(n, 1)}, torch::kUInt8);
  if (comm.rank() == root) std::memcpy(buf.data_ptr(), bytes.data(), bytes.size());
  comm.broadcast(buf, root);
  return std::string(static_cast<const char*>(buf.data_ptr()), static_cast<size_t>(n));
}

std::vector<std::string> all_gather_bytes(Communicator& comm, const std::string& bytes) {
  auto len = torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kInt64);
  const auto lens = comm.all_gather(len);
  const int64_t max_len = lens.max().item<int64_t>();
  auto buf = torch::zeros({std::max<int64_t>(max_len, 1)}, torch::kUInt8);
  std::memcpy(buf.data_ptr(), bytes.data(), bytes.size());
  const auto all = comm.all_gather(buf).view({comm.size(), -1});
  std::vector<std::string> out;
  for (int r = 0; r < comm.size(); ++r) {
    out.emplace_back(static_cast<const char*>(all[r].data_ptr()), static_cast<size_t>(lens[r].item<int64_t>()));
  }
  return out;
}

}  // namespace switchyard::parallel
