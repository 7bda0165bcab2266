#!/usr/bin/env bash
# One device call: build with CUDA, check the fused kernels and the layer (bf16 vs fp32), run our
# `bench layer` and the peer script on the same card, and print a table of ratios.
# Usage (GPU machine, repository root): bench/gpu_layer_bench.sh PEER_SCRIPT [OUT_DIR]
#   PEER_SCRIPT: a copy of peer_moe_layer.py inside the checkout (e.g. .gpu/peer_moe_layer.py).
set -euo pipefail
cd "$(dirname "$0")/.."
peer=$1; out=${2:-${OUT:-/tmp}}
tokens=${TOKENS:-16384}
[ -x build-gpu/bin/switchyard ] || launch/build_gpu.sh >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1 | tee "$out/card.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/card.txt"
build-gpu/bin/modules_test --gtest_filter='MoeKernels.*:GpuModules.*' >"$out/kernel_tests.log" 2>&1 &&
  echo "kernel and layer correctness tests: passed" || { echo "kernel tests FAILED"; tail -40 "$out/kernel_tests.log"; }
: >"$out/ours.jsonl"; : >"$out/ours_reset.jsonl"
for preset in mixtral_like deepseek_like; do
  build-gpu/bin/switchyard bench layer --device cuda --preset "$preset" --tokens "$tokens" | tee -a "$out/ours.jsonl"
  build-gpu/bin/switchyard bench layer --device cuda --preset "$preset" --tokens "$tokens" --reset-grads --check-tokens 0 |
    tee -a "$out/ours_reset.jsonl"
done
python3 "$peer" --tokens "$tokens" --peers "${PEERS:-torch_grouped_mm,hf_grouped_mm,hf_eager}" | tee "$out/peers.jsonl"
python3 - "$out/ours.jsonl" "$out/peers.jsonl" <<'PY'
import json, sys
ours = {r["preset"]: r for r in map(json.loads, open(sys.argv[1]))}
peers = [json.loads(l) for l in open(sys.argv[2])]
print("\n| preset | impl | fwd TFLOP/s | fwd+bwd TFLOP/s | peak GiB | ours / impl (fwd+bwd) |")
print("|---|---|---|---|---|---|")
for preset, o in ours.items():
    print(f"| {preset} | switchyard | {o['fwd_tflops']:.0f} | {o['fwdbwd_tflops']:.0f} | {o['peak_mem_gib']:.2f} | 1.00 |")
    for p in peers:
        if p.get("preset") != preset: continue
        if "error" in p: print(f"| {preset} | {p['peer']} | error: {p['error'][:60]} | | | |"); continue
        print(f"| {preset} | {p['peer']} | {p['fwd_tflops']:.0f} | {p['fwdbwd_tflops']:.0f} | {p['peak_mem_gib']:.2f} | "
              f"{o['fwdbwd_tflops'] / p['fwdbwd_tflops']:.2f} |")
for p in peers:
    if p.get("what") == "dense_matmul_ceiling": print(f"dense bf16 GEMM ceiling: {p['tflops']:.0f} TFLOP/s")
PY
