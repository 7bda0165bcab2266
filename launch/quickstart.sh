#!/usr/bin/env bash
# Installs what is missing, builds, and trains the quickstart MoE (configs/quickstart.yaml) on 2 ranks
# on the built-in synthetic corpus. Run it again and it resumes from the newest checkpoint.
# Extra arguments go to `switchyard train` (e.g. --set train.steps=600).
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup.sh
launch/build.sh
build/bin/switchyard --version
mpi_flags=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && mpi_flags+=(--allow-run-as-root)
run_dir=runs/quickstart
mpirun -np 2 "${mpi_flags[@]}" build/bin/switchyard train --config configs/quickstart.yaml --run-dir "$run_dir" "$@"
echo "quickstart: metrics in $run_dir/metrics.jsonl (TensorBoard: tensorboard --logdir $run_dir)"
echo "quickstart: checkpoints in $run_dir/checkpoints (inspect: build/bin/switchyard inspect $run_dir/checkpoints/\$(cat $run_dir/checkpoints/latest))"
