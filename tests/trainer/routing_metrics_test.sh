#!/usr/bin/env bash
# Per-layer routing metrics through the CLI on 2 ranks (issue 22): for each router family below, every
# logged line of metrics.jsonl carries each MoE layer's expert loads, and they add up: the slots routed
# to experts and null experts plus the slots dropped equal tokens x k for fixed-k routers (top_p: the
# loads lie between tokens and tokens x k_max); router entropy, experts per token, null experts per
# token, capacity and LocMoE's bound, SMILE's two balance terms each under its own name. Then
# `switchyard report` draws the PNGs (skipped without gnuplot).
# Usage: routing_metrics_test.sh <switchyard> <mpiexec> <mpiexec flags...>
source "$(dirname "$0")/tiny_run.sh"
common+=(--set parallel.expert_parallel=2 --set train.log_every=2 --set train.checkpoint_every=0)
check() {  # name, python condition over (line, layer l, k, tokens, experts), extra --set...
  local name=$1 cond=$2; shift 2
  local run=$work/$name
  timeout 120 "$mpiexec" -n 2 "${flags[@]}" "$bin" train --config "$cfg" "${common[@]}" --run-dir "$run" "$@" >"$run.log" 2>&1 ||
    { fail "$name: training: $(grep -m1 error "$run.log")"; return; }
  if python3 - "$run/metrics.jsonl" "$cond" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
tokens, k, experts = 8 * 32, 2, 4
assert len(lines) == 4, len(lines)
for line in lines:
    for l in range(2):
        load = line[f"expert_load_moe{l}"]
        assert all(x >= 0 for x in load), load
        assert eval(sys.argv[2]), (line["step"], l, load, {k: v for k, v in line.items() if k.endswith(f"_moe{l}")})
        assert 0 < line[f"router_entropy_moe{l}"] < 10
PY
  then ok "$name: $(python3 -c "import json,sys; l=json.loads(open(sys.argv[1]).readlines()[-1]); print({k: v for k, v in l.items() if k.endswith('_moe0')})" "$run/metrics.jsonl")"
  else fail "$name: $(tail -n 2 "$run.log")"; fi
}
check topk_capacity 'sum(load) + line[f"dropped_moe{l}"] == tokens * k and line[f"capacity_moe{l}"] == 32 and line[f"dropped_moe{l}"] > 0' \
  --set model.moe.capacity_factor=1.0
check null_experts 'len(load) == experts + 2 and sum(load) + line[f"dropped_moe{l}"] == tokens * k and abs(line[f"experts_per_token_moe{l}"] + line[f"null_per_token_moe{l}"] - sum(load) / tokens) < 1e-9' \
  --set model.moe.null_experts=2
check top_p 'tokens <= sum(load) <= tokens * 3 and line[f"dropped_moe{l}"] == 0 and 1 <= line[f"experts_per_token_moe{l}"] <= 3' \
  --set model.moe.router.kind=top_p --set model.moe.router.k_max=3
check smile 'sum(load) + line[f"dropped_moe{l}"] == tokens * k and f"loss_node_balance_moe{l}" in line and f"loss_load_balance_moe{l}" in line' \
  --set model.moe.router.kind=bilevel --set model.moe.router.groups=2
check grap 'sum(load) + line[f"dropped_moe{l}"] == tokens * k and line[f"capacity_min_moe{l}"] > 0 and line[f"capacity_moe{l}"] >= line[f"capacity_min_moe{l}"]' \
  --set model.moe.router.kind=grap --set model.moe.capacity_factor=1.0

if command -v gnuplot >/dev/null; then
  "$bin" report "$work/topk_capacity" --out "$work/report" >"$work/report.log" 2>&1
  pngs=0
  for f in loss expert_load_moe0 expert_load_moe1 bytes; do
    [ "$(head -c 4 "$work/report/$f.png" 2>/dev/null | od -An -tx1 | tr -d ' ')" = "89504e47" ] && pngs=$((pngs + 1))
  done
  [ "$pngs" -eq 4 ] && ok "report: 4 PNGs ($(cat "$work/report.log"))" || fail "report: $pngs PNGs: $(cat "$work/report.log")"
  "$bin" report "$work/nowhere" --out "$work/r2" 2>"$work/r2.err"; status=$?
  [ "$status" -eq 2 ] && grep -q "^error: .*nowhere/metrics.jsonl: no metrics here" "$work/r2.err" &&
    ok "report of a directory without metrics: exit 2, one line" || fail "report without metrics: $status $(cat "$work/r2.err")"
else
  echo "skip: report (no gnuplot; Debian's gnuplot-nox)"
fi

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
