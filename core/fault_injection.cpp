// SWITCHYARD_FAULT_INJECT parsing.
#include "core/fault_injection.h"

#include <cstdlib>
#include <sstream>

namespace switchyard::core {
namespace {

int g_fault_rank = -1;

/// Calls `match(value)` for every entry `name:value[@rank]` that applies to this rank.
template <class Match>
bool any_entry(const std::string& name, Match match) {
  const char* spec = std::getenv("SWITCHYARD_FAULT_INJECT");
  if (spec == nullptr) return false;
  std::stringstream list(spec);
  for (std::string entry; std::getline(list, entry, ',');) {
    const auto colon = entry.find(':');
    if (colon == std::string::npos || entry.substr(0, colon) != name) continue;
    std::string value = entry.substr(colon + 1);
    const auto at = value.find('@');
    if (at != std::string::npos) {
      const int rank = std::atoi(value.c_str() + at + 1);
      value.resize(at);
      if (rank != g_fault_rank && !(g_fault_rank < 0 && rank == 0)) continue;
    }
    if (match(value)) return true;
  }
  return false;
}

}  // namespace

void set_fault_rank(int rank) { g_fault_rank = rank; }

bool fault_at(const std::string& name, int64_t value) {
  return any_entry(name, [&](const std::string& v) { return !v.empty() && std::strtoll(v.c_str(), nullptr, 10) == value; });
}

bool fault_named(const std::string& name, const std::string& value) {
  return any_entry(name, [&](const std::string& v) { return v == value; });
}

}  // namespace switchyard::core
