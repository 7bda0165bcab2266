#!/usr/bin/env bash
# Prints the build flavor for this machine: cuda where an NVIDIA GPU, a CUDA-enabled PyTorch (whose
# LibTorch the CUDA build uses) and nvcc are all present; cpu otherwise. SWITCHYARD_FLAVOR=cpu or
# cuda forces one. Used by setup.sh, quickstart.sh and run_tests.sh (docs/building.md).
set -uo pipefail
case "${SWITCHYARD_FLAVOR:-auto}" in
  cpu | cuda) echo "$SWITCHYARD_FLAVOR"; exit 0 ;;
  auto) ;;
  *) echo "error: SWITCHYARD_FLAVOR must be cpu, cuda or auto, got '$SWITCHYARD_FLAVOR'" >&2; exit 2 ;;
esac
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU ' &&
   python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1 &&
   { command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; }; then
  echo cuda
else
  echo cpu
fi
