#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit and multi-rank) with CTest. On the CPU
# flavor (launch/flavor.sh) it then runs the sanitizer build's subset (launch/sanitize_tests.sh;
# SWITCHYARD_SANITIZE_TESTS=0 skips it); on the CUDA flavor it builds build-gpu/ and the GPU tests run
# too.
# Usage: launch/run_tests.sh [ctest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
jobs=$(nproc 2>/dev/null || echo 2)
if [ "$(launch/flavor.sh)" = cuda ]; then
  launch/build_gpu.sh
  (cd build-gpu && ctest --output-on-failure -j"$jobs" "$@")
  exit 0
fi
launch/build.sh
(cd build && ctest --output-on-failure -j"$jobs" "$@")
if [ "${SWITCHYARD_SANITIZE_TESTS:-1}" != 0 ]; then launch/sanitize_tests.sh; fi
