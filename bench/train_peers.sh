#!/usr/bin/env bash
# One device call: `switchyard train` beside the PyTorch-native training peer (peer_moe_train.py:
# torchtitan-style, eager and torch.compile) on the same card and shape, alternating rounds; then a
# Kineto trace of our steps. Prints a table: tokens/s, model TFLOP/s, peak memory, ours / peer.
# Usage (GPU machine, repository root): bench/train_peers.sh PEER_SCRIPT [OUT_DIR]
#   PEER_SCRIPT: a copy of peer_moe_train.py inside the checkout (e.g. .gpu/peer_moe_train.py).
#   SHAPES ("mixtral_like qwen3_moe_like"), ROUNDS (2), STEPS (30), MODES (eager,compile),
#   PROFILE (1: a trace of 2 steps per shape), EXTRA (more --set for ours, e.g. train.recompute=moe).
# Equal work: ours runs the peer's losses and head (no z-loss, untied output head), the same global
# batch, micro-batch, sequence, bf16 autocast with fp32 master weights, AdamW and clipping at 1.0.
# Model FLOPs, one convention for both (modules::model_flops_per_token, PaLM's): 6 x (matmul
# parameters a token uses: attention q, k, v, o; top-k routed experts and shared ones; router; head)
# + 12 x layers x d_model x seq_len for the attention scores (not halved for the causal mask).
set -uo pipefail
cd "$(dirname "$0")/.."
peer=$1; out=${2:-${OUT:-/tmp}}; mkdir -p "$out"
rounds=${ROUNDS:-2}; steps=${STEPS:-30}; modes=${MODES:-eager,compile}
[ -x build-gpu/bin/switchyard ] || launch/build_gpu.sh >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 | tee "$out/card.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/card.txt"

peer_args() {  # the peer's arguments for a config's shape
  case $1 in
    mixtral_like) echo "--d 1024 --layers 8 --heads 16 --ffn 3584 --experts 8 --k 2 --seq 1024 --global-batch 16 --micro 8" ;;
    qwen3_moe_like) echo "--d 2048 --layers 4 --heads 32 --kv-heads 4 --ffn 768 --experts 128 --k 8 --seq 4096 --global-batch 8 --micro 4" ;;
  esac
}
ours() {  # shape, run dir, extra args
  local shape=$1 dir=$2; shift 2
  rm -rf "$dir"
  build-gpu/bin/switchyard train --config "configs/$shape.yaml" --run-dir "$dir" --set train.steps="$steps" \
    --set train.log_every=5 --set train.eval_every=0 --set train.checkpoint_every=0 --set losses.z_loss=0 \
    --set model.tie_embeddings=false ${EXTRA:+$(for e in $EXTRA; do echo --set "$e"; done)} "$@" >"$dir.log" 2>&1
  # Windows after the first (warm-up): the median tokens/s, model TFLOP/s; the peak memory.
  python3 - "$dir/metrics.jsonl" "$shape" <<'PY' || tail -5 "$dir.log"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
print(json.dumps({"impl": "switchyard", "shape": sys.argv[2], "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                  "model_tflops": statistics.median(r["model_tflops"] for r in rows),
                  "peak_gib": max(r.get("peak_mem_gib", -1) for r in rows), "loss": rows[-1]["loss"]}))
PY
}
: >"$out/train_peers.jsonl"
for shape in ${SHAPES:-mixtral_like qwen3_moe_like}; do
  for round in $(seq "$rounds"); do
    ours "$shape" "$out/run_${shape}_$round" | tee -a "$out/train_peers.jsonl"
    python3 "$peer" $(peer_args "$shape") --steps "$steps" --modes "$modes" 2>"$out/peer_${shape}_$round.err" |
      sed "s/^{/{\"shape\": \"$shape\", /" | tee -a "$out/train_peers.jsonl"
  done
  if [ "${PROFILE:-1}" = 1 ]; then
    ours "$shape" "$out/profile_$shape" --profile "$out/trace_$shape.json" --profile-steps 2 >/dev/null
    python3 bench/trace_summary.py "$out/trace_$shape.json" 2 | tee "$out/trace_$shape.summary.json"
  fi
done
python3 - "$out/train_peers.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def flops(shape):  # per token, modules::model_flops_per_token
    d, L, H, G, f, E, k, seq, V = {"mixtral_like": (1024, 8, 16, 16, 3584, 8, 2, 1024, 256),
                                   "qwen3_moe_like": (2048, 4, 32, 4, 768, 128, 8, 4096, 256)}[shape]
    per_layer = 2 * d * d + 2 * d * d * G / H + k * 3 * d * f + d * E
    return 6 * (L * per_layer + d * V) + 12 * L * d * seq
print("\n| shape | impl | runs | tokens/s (median) | model TFLOP/s | peak GiB | ours / impl (per round) |")
print("|---|---|---|---|---|---|---|")
for shape in dict.fromkeys(r["shape"] for r in rows):
    o = [r for r in rows if r["shape"] == shape and r.get("impl") == "switchyard"]
    print(f"| {shape} | switchyard | {len(o)} | {statistics.median(r['tokens_per_s'] for r in o):,.0f} | "
          f"{statistics.median(r['model_tflops'] for r in o):.0f} | {max(r['peak_gib'] for r in o):.1f} | 1.00 |")
    for peer in dict.fromkeys(r["peer"] for r in rows if r["shape"] == shape and "peer" in r):
        p = [r for r in rows if r["shape"] == shape and r.get("peer") == peer]
        if any("error" in r for r in p): print(f"| {shape} | {peer} | error: {p[0].get('error', '')[:80]} | | | | |"); continue
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(o, p)]
        tok = statistics.median(r["tokens_per_s"] for r in p)
        print(f"| {shape} | {peer} | {len(p)} | {tok:,.0f} | {tok * flops(shape) / 1e12:.0f} | "
              f"{max(r['peak_gib'] for r in p):.1f} | {statistics.median(ratios):.2f} ({', '.join(f'{x:.3f}' for x in ratios)}) |")
PY
