#!/usr/bin/env bash
# Installs what is missing, builds, and trains the quickstart MoE (configs/quickstart.yaml) on 2 ranks
# on the built-in synthetic corpus: on the CPU, or on the GPU where launch/flavor.sh finds one (the
# CUDA build in build-gpu/, bf16). Run it again and it resumes from the newest checkpoint.
# Extra arguments go to `switchyard train` (e.g. --set train.steps=600).
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
flavor=$(launch/flavor.sh)
if [ "$flavor" = cuda ]; then
  launch/build_gpu.sh
  bin=build-gpu/bin/switchyard
  device=(--set train.device=cuda --set train.precision=bf16)
  run_dir=runs/quickstart_gpu
else
  launch/build.sh
  bin=build/bin/switchyard
  device=()
  run_dir=runs/quickstart
fi
"$bin" --version
mpi_flags=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && mpi_flags+=(--allow-run-as-root)
mpirun -np 2 "${mpi_flags[@]}" "$bin" train --config configs/quickstart.yaml --run-dir "$run_dir" "${device[@]}" "$@"
echo "quickstart ($flavor): metrics in $run_dir/metrics.jsonl (TensorBoard: tensorboard --logdir $run_dir; plots: $bin report $run_dir --out $run_dir/report)"
echo "quickstart ($flavor): checkpoints in $run_dir/checkpoints (inspect: $bin inspect $run_dir/checkpoints/\$(cat $run_dir/checkpoints/latest))"
