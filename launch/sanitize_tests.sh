#!/usr/bin/env bash
# The unit and multi-rank tests built with AddressSanitizer + UndefinedBehaviorSanitizer (gcc), into
# build-asan/. A named subset, to stay inside CI's budget: the unit suites of core, data, placement,
# losses and trainer; the fuzz targets (a few seconds each, where sanitizers matter most); the exchange
# and the trainer under mpirun on 2 ranks. Any report fails the run. Called by run_tests.sh.
# Usage: launch/sanitize_tests.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR="$PWD"
jobs=$(nproc 2>/dev/null || echo 2)
unit=(core_test data_test placement_test losses_test trainer_test)
fuzz=(fuzz_config fuzz_placement_files fuzz_token_readers fuzz_checkpoint_manifest fuzz_hf_files)
mpi=(expert_parallel_test trainer_mpi_test)
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSWITCHYARD_SANITIZE=address,undefined \
  -DSWITCHYARD_WITH_PLANNER=ON >build-asan-configure.log 2>&1 || { cat build-asan-configure.log >&2; exit 1; }
rm -f build-asan-configure.log
cmake --build build-asan -j"$jobs" --target "${unit[@]}" "${fuzz[@]}" "${mpi[@]}"

# Leaks: Open MPI and LibTorch keep allocations until exit by design; everything else is fatal.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
mpi_flags=()
[ "$(id -u)" -eq 0 ] && mpi_flags+=(--allow-run-as-root)
failed=0
run() {  # label, command...
  local label=$1; shift
  local start=$SECONDS
  if "$@" >"build-asan/$label.log" 2>&1; then
    echo "sanitized ok   $label ($((SECONDS - start)) s)"
  else
    echo "sanitized FAIL $label ($((SECONDS - start)) s):"; tail -n 30 "build-asan/$label.log"; failed=1
  fi
}
for t in "${unit[@]}"; do run "$t" "build-asan/bin/$t"; done
# (Run from build-asan/, where a fuzz target writes the input of a failure: crash-<target>-<pid>.)
for t in "${fuzz[@]}"; do run "$t" bash -c "cd build-asan && bin/$t --seconds 3 ../tests/fuzz/corpus/${t#fuzz_}"; done
for t in "${mpi[@]}"; do run "$t.np2" mpiexec -n 2 "${mpi_flags[@]}" "build-asan/bin/$t"; done
exit "$failed"
