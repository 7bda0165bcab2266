#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit and multi-rank) with CTest, then the
# sanitizer build's subset (launch/sanitize_tests.sh; SWITCHYARD_SANITIZE_TESTS=0 skips it).
# Usage: launch/run_tests.sh [ctest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
launch/build.sh
(cd build && ctest --output-on-failure -j"$(nproc 2>/dev/null || echo 2)" "$@")
if [ "${SWITCHYARD_SANITIZE_TESTS:-1}" != 0 ]; then launch/sanitize_tests.sh; fi
