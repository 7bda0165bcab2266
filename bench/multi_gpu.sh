#!/usr/bin/env bash
# Multi-GPU runs with the NCCL backend (one device call on a machine with N >= 2 GPUs):
#   1. world-size invariance: the expert-parallel tests under mpirun on N ranks (NCCL, EP 1..N,
#      flat and hierarchical, fp32 and bf16, against the single-process reference);
#   2. `bench alltoall --backend nccl` against raw grouped ncclSend/ncclRecv in the same run;
#   3. training throughput of configs/mixtral_like.yaml on 1 GPU and on N GPUs (EP N), on N GPUs
#      without and with comm/compute overlap (parallel.overlap_chunks, OVERLAP="1 2 4"): tokens/s,
#      MFU and the exchange's share of step time, from metrics.jsonl.
# Usage (GPU machine, repository root, after launch/build_gpu.sh): bench/multi_gpu.sh [OUT_DIR]
# SECTIONS="invariance alltoall train" (default: all), STEPS (30), GPUS (all).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp}}
n=${GPUS:-$(nvidia-smi -L | wc -l)}
steps=${STEPS:-30}
sections=${SECTIONS:-invariance alltoall train}
overlap=${OVERLAP:-1 2 4}
has() { [[ " $sections " == *" $1 "* ]]; }
mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE=0)
bin=build-gpu/bin
echo "== $n GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
if has invariance; then
echo "== 1. invariance (NCCL)"
timeout 300 "${mpi[@]}" -np "$n" $bin/expert_parallel_test --gtest_color=no --gtest_filter='*Nccl*:*WorldSize*:*Hierarchical*:*Overlap*' \
  >"$out/nccl_invariance.log" 2>&1 && echo "passed" || { echo "FAILED"; tail -40 "$out/nccl_invariance.log"; }
grep -E "^\[ +(OK|FAILED|SKIPPED) " "$out/nccl_invariance.log" | head -20
fi
if has alltoall; then
echo "== 2. alltoall"
timeout 180 "${mpi[@]}" -np "$n" $bin/switchyard bench alltoall --backend nccl --device cuda \
  --bytes 65536,1048576,16777216,67108864 --iters 20 | tee "$out/alltoall_nccl.jsonl"
if [ "$n" -ge 4 ]; then
  timeout 180 "${mpi[@]}" -np "$n" $bin/switchyard bench alltoall --backend nccl --device cuda \
    --ranks-per-node $((n / 2)) --bytes 1048576,16777216 | tee -a "$out/alltoall_nccl.jsonl"
fi
fi
has train || exit 0
echo "== 3. training"
common=(--config configs/mixtral_like.yaml --set train.steps=$steps --set train.log_every=5 --set train.eval_every=0
        --set train.checkpoint_every=0)
runs=("1 1")
for c in $overlap; do runs+=("$n $c"); done
global_batch=$(awk '/global_batch:/{print $2}' configs/mixtral_like.yaml)
for run in "${runs[@]}"; do
  read -r ranks chunks <<<"$run"
  name="mgpu${ranks}_c$chunks"
  micro=$(( global_batch / ranks < 8 ? global_batch / ranks : 8 ))  # same global batch at any rank count
  rm -rf "runs/$name"
  timeout 400 "${mpi[@]}" -np "$ranks" $bin/switchyard train "${common[@]}" --set parallel.expert_parallel=$ranks --set train.micro_batch=$micro \
    --set parallel.overlap_chunks=$chunks --run-dir "runs/$name" --resume never >"$out/train_$name.log" 2>&1 ||
    { echo "train $name FAILED"; tail -5 "$out/train_$name.log"; }
  python3 - "runs/$name/metrics.jsonl" "$ranks" "$chunks" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]  # the first window holds warm-up
if not rows: sys.exit("no metrics")
mean = lambda k: sum(r.get(k, 0) for r in rows) / len(rows)
print(f"ranks {sys.argv[2]} overlap_chunks {sys.argv[3]}: tokens/s {mean('tokens_per_s'):.0f}  mfu {mean('mfu'):.3f}"
      f"  exchange share {mean('exchange_share'):.3f}  loss {rows[-1]['loss']:.4f}")
PY
done
