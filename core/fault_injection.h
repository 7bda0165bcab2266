// Test hooks: SWITCHYARD_FAULT_INJECT names faults to inject, so tests can make a chosen rank fail at
// a chosen point of a real run. Never set in production; every hook is a no-op without it.
//
// Syntax: a comma-separated list of `name:value[@rank]`, e.g.
//   SWITCHYARD_FAULT_INJECT=throw_at_step:5@1,nan_at_step:3
// `@rank` limits a fault to one world rank (set_fault_rank); without it every rank injects it.
#pragma once

#include <cstdint>
#include <string>

namespace switchyard::core {

/// This process's world rank, for `@rank` filters (main() calls it after MPI start-up).
void set_fault_rank(int rank);

/// Whether fault `name` is requested with integer value `value` for this rank.
bool fault_at(const std::string& name, int64_t value);

/// Whether fault `name` is requested with text value `value` (e.g. a file name) for this rank.
bool fault_named(const std::string& name, const std::string& value);

}  // namespace switchyard::core
