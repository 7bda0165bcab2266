#!/usr/bin/env bash
# Configures and builds Switchyard into build/ (Release). Used by quickstart.sh and run_tests.sh.
# Extra arguments go to CMake's configure step (e.g. -DSWITCHYARD_SANITIZE=address,undefined).
set -euo pipefail
cd "$(dirname "$0")/.."

# ccache works with the LibTorch precompiled header only with these sloppiness settings; the base
# directory lets clones in other folders (CI's) reuse the cache.
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_BASEDIR="$PWD"
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >build-configure.log 2>&1 || {
  cat build-configure.log >&2
  echo "error: CMake configure failed (log above, also in build-configure.log)" >&2
  exit 1
}
rm -f build-configure.log
cmake --build build -j"$jobs"
