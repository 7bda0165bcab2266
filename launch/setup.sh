#!/usr/bin/env bash
# Installs the Debian packages Switchyard needs, when they are missing. Idempotent and quiet when all
# are present. Usage: launch/setup.sh
set -euo pipefail

packages=(
  build-essential cmake ccache pkg-config
  libtorch-dev
  # Debian's LibTorch calls libblas.so.3; without OpenBLAS that is the reference BLAS (~3 GFLOP/s
  # against ~70 with OpenBLAS on the 2-core machine).
  libopenblas0-pthread
  libopenmpi-dev openmpi-bin
  libyaml-cpp-dev
  libprotobuf-dev protobuf-compiler
  libgtest-dev libcli11-dev nlohmann-json3-dev
  gnuplot-nox  # switchyard report
  libsentencepiece-dev sentencepiece  # switchyard tokenize (spm_train makes models)
  coinor-libcbc-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages: ${missing[*]}; run 'sudo launch/setup.sh' (installing needs root)" >&2
  exit 1
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
