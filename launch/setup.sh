#!/usr/bin/env bash
# Installs the packages Switchyard needs that are missing (apt: Debian 12, Ubuntu 22.04 / 24.04).
# Idempotent and quiet when all are present. A package counts as present when dpkg has it or when
# what it provides is already there (a header, a command): a machine whose headers came another way
# needs no apt. For the CUDA flavor (launch/flavor.sh) LibTorch comes from the CUDA PyTorch, so
# Debian's CPU libtorch-dev is not installed. Optional packages (the plots of `switchyard report`,
# SentencePiece, the CBC planner) only warn when they cannot be installed.
# Usage: launch/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
flavor=$(launch/flavor.sh)

# package | what shows it present (cmd:NAME, or a file) | required or optional
table=(
  "build-essential|cmd:g++|required"
  "cmake|cmd:cmake|required"
  "ccache|cmd:ccache|optional"
  "pkg-config|cmd:pkg-config|required"
  "libopenmpi-dev|cmd:mpicc|required"
  "openmpi-bin|cmd:mpirun|required"
  "libyaml-cpp-dev|/usr/include/yaml-cpp/yaml.h|required"
  "libprotobuf-dev|/usr/include/google/protobuf/message.h|required"
  "protobuf-compiler|cmd:protoc|required"
  "libgtest-dev|/usr/include/gtest/gtest.h|required"
  "libcli11-dev|/usr/include/CLI/CLI.hpp|required"
  "nlohmann-json3-dev|/usr/include/nlohmann/json.hpp|required"
  "gnuplot-nox|cmd:gnuplot|optional"                                       # switchyard report
  "libsentencepiece-dev|/usr/include/sentencepiece_processor.h|optional"   # switchyard tokenize
  "sentencepiece|cmd:spm_train|optional"                                   # makes tokenizer models
  "coinor-libcbc-dev|/usr/include/coin/Cbc_C_Interface.h|optional"         # the ILP planner
)
if [ "$flavor" = cpu ]; then
  table+=("libtorch-dev|/usr/include/torch/csrc/api/include/torch/torch.h|required")
  # Debian's LibTorch calls libblas.so.3; without OpenBLAS that is the reference BLAS (~3 GFLOP/s
  # against ~70 with OpenBLAS on the 2-core machine).
  table+=("libopenblas0-pthread|dpkg|required")
fi

present() {  # package, probe
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" && return 0
  case $2 in
    dpkg) return 1 ;;
    cmd:*) command -v "${2#cmd:}" >/dev/null 2>&1 ;;
    *) [ -e "$2" ] ;;
  esac
}

required=(); optional=()
for row in "${table[@]}"; do
  IFS='|' read -r package probe need <<<"$row"
  present "$package" "$probe" && continue
  if [ "$need" = required ]; then required+=("$package"); else optional+=("$package"); fi
done
[ ${#required[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  [ ${#required[@]} -eq 0 ] && { echo "setup: optional packages missing (run as root to install): ${optional[*]}" >&2; exit 0; }
  echo "error: missing packages: ${required[*]} ${optional[*]}; run 'sudo launch/setup.sh' (installing needs root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup ($flavor): installing ${required[*]} ${optional[*]}"
if ! apt-get update -qq >/dev/null 2>&1; then
  [ ${#required[@]} -eq 0 ] && { echo "setup: no package index (offline?): skipping the optional ${optional[*]}" >&2; exit 0; }
  echo "error: apt-get update failed; required packages missing: ${required[*]}" >&2
  exit 1
fi
if [ ${#required[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${required[@]}" >/dev/null
fi
for p in "${optional[@]}"; do
  apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 || echo "setup: optional $p not installed" >&2
done
echo "setup: done"
