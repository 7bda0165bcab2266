#!/usr/bin/env bash
# One device call: build with CUDA, check the fused kernels and the layer (bf16 vs fp32), run our
# `bench layer` and the peer script on the same card, and print a table of ratios.
# Usage (GPU machine, repository root): bench/gpu_layer_bench.sh PEER_SCRIPT [OUT_DIR]
#   PEER_SCRIPT: a copy of peer_moe_layer.py inside the checkout (e.g. .gpu/peer_moe_layer.py).
#   ROUNDS (3): ours and the torch_grouped_mm peer alternate this many times, so that the card's
#   drift over the call (clocks under its power limit: single runs move by up to ~5-10%) falls on
#   both; the table gives each side's median run and the median of the per-round ratios.
#   PEERS: the peers run once after the rounds (default hf_grouped_mm,hf_eager).
set -euo pipefail
cd "$(dirname "$0")/.."
peer=$1; out=${2:-${OUT:-/tmp}}
tokens=${TOKENS:-16384}
rounds=${ROUNDS:-3}
[ -x build-gpu/bin/switchyard ] || launch/build_gpu.sh >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$out/card.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/card.txt"
build-gpu/bin/modules_test --gtest_filter='MoeKernels.*:GpuModules.*' >"$out/kernel_tests.log" 2>&1 &&
  echo "kernel and layer correctness tests: passed" || { echo "kernel tests FAILED"; tail -40 "$out/kernel_tests.log"; }
: >"$out/ours.jsonl"; : >"$out/ours_reset.jsonl"; : >"$out/peers.jsonl"
for round in $(seq "$rounds"); do
  check=512; [ "$round" = 1 ] || check=0  # the bf16-vs-fp32 check once per preset
  for preset in mixtral_like deepseek_like; do
    build-gpu/bin/switchyard bench layer --device cuda --preset "$preset" --tokens "$tokens" --check-tokens $check |
      tee -a "$out/ours.jsonl"
  done
  python3 "$peer" --tokens "$tokens" --peers torch_grouped_mm | tee -a "$out/peers.jsonl"
done
for preset in mixtral_like deepseek_like; do
  build-gpu/bin/switchyard bench layer --device cuda --preset "$preset" --tokens "$tokens" --reset-grads --check-tokens 0 |
    tee -a "$out/ours_reset.jsonl"
done
python3 "$peer" --tokens "$tokens" --peers "${PEERS:-hf_grouped_mm,hf_eager}" | tee -a "$out/peers.jsonl"
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,power.draw --format=csv,noheader | sed 's/^/card after the runs (sm clock, temperature, power): /'
python3 - "$out/ours.jsonl" "$out/peers.jsonl" <<'PY'
import json, statistics, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
peers = [json.loads(l) for l in open(sys.argv[2])]
layer = [p for p in peers if p.get("what") == "moe_layer"]
med = lambda rows, k: statistics.median(r[k] for r in rows)
print("\n| preset | impl | runs | fwd TFLOP/s | fwd+bwd TFLOP/s | peak GiB | ours / impl (fwd+bwd) |")
print("|---|---|---|---|---|---|---|")
for preset in dict.fromkeys(o["preset"] for o in ours):
    o = [r for r in ours if r["preset"] == preset]
    print(f"| {preset} | switchyard | {len(o)} | {med(o, 'fwd_tflops'):.0f} | {med(o, 'fwdbwd_tflops'):.0f} | "
          f"{max(r['peak_mem_gib'] for r in o):.2f} | 1.00 |")
    for name in dict.fromkeys(p["peer"] for p in layer):
        p = [r for r in layer if r["peer"] == name and r["preset"] == preset]
        if not p: continue
        if "error" in p[0]: print(f"| {preset} | {name} | error: {p[0]['error'][:60]} | | | | |"); continue
        if len(p) == len(o):  # alternated with ours: the median of the per-round ratios
            ratios = [a["fwdbwd_tflops"] / b["fwdbwd_tflops"] for a, b in zip(o, p)]
            ratio = f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)})"
        else:
            ratio = f"{med(o, 'fwdbwd_tflops') / med(p, 'fwdbwd_tflops'):.2f}"
        print(f"| {preset} | {name} | {len(p)} | {med(p, 'fwd_tflops'):.0f} | {med(p, 'fwdbwd_tflops'):.0f} | "
              f"{max(r['peak_mem_gib'] for r in p):.2f} | {ratio} |")
ceiling = [p["tflops"] for p in peers if p.get("what") == "dense_matmul_ceiling"]
if ceiling: print(f"dense bf16 GEMM ceiling: {statistics.median(ceiling):.0f} TFLOP/s (median of {len(ceiling)})")
PY
