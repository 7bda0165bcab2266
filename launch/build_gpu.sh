#!/usr/bin/env bash
# Configures and builds Switchyard with CUDA and NCCL against a pip-installed PyTorch's LibTorch
# (the GPU machine of docs/building.md). Builds into build-gpu/. Extra arguments go to CMake.
# Header-only packages not installed there: set CLI11_ROOT and NLOHMANN_JSON_ROOT to their headers.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
nccl_root=${NCCL_ROOT:-$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])')}
nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DSWITCHYARD_WITH_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$torch_prefix" -DNCCL_ROOT="$nccl_root" "$@"
cmake --build build-gpu -j"$(nproc)"
