#!/usr/bin/env bash
# `switchyard train --profile`: either a Kineto trace of the requested steps (a LibTorch with Kineto,
# as on the GPU machine) or, where LibTorch has no Kineto (Debian's CPU build), exit 2 with one
# "error: --profile: ..." line before any step, leaving no run directory and no trace file.
# Usage: train_profile_test.sh <switchyard binary> <configs dir>
set -u
bin=$1
configs=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" train --config "$configs/quickstart.yaml" --set parallel.expert_parallel=1 --set model.n_layers=1 \
  --set train.steps=4 --set train.eval_every=0 --set train.checkpoint_every=0 --set train.log_every=2 \
  --run-dir "$tmp/run" --resume never --profile "$tmp/trace.json" --profile-steps 2 >"$tmp/out" 2>"$tmp/err"
status=$?
if [ "$status" -eq 0 ]; then
  grep -q '"traceEvents"' "$tmp/trace.json" || { echo "FAIL: exit 0 but $tmp/trace.json is no Chrome trace"; exit 1; }
  grep -q 'aten::' "$tmp/trace.json" || { echo "FAIL: the trace holds no LibTorch ops"; exit 1; }
  grep -q 'profile: steps 3-4 in' "$tmp/err" || { echo "FAIL: no 'profile: steps 3-4' line:"; cat "$tmp/err"; exit 1; }
  [ -f "$tmp/run/metrics.jsonl" ] || { echo "FAIL: the profiled run wrote no metrics"; exit 1; }
  echo "ok: trace of steps 3-4 written ($(wc -c <"$tmp/trace.json") bytes)"
elif [ "$status" -eq 2 ]; then
  [ "$(grep -c '^error:' "$tmp/err")" -eq 1 ] && [[ "$(grep '^error:' "$tmp/err")" == "error: --profile: no trace written"* ]] ||
    { echo "FAIL: exit 2 without the one-line --profile error:"; cat "$tmp/err"; exit 1; }
  [ ! -e "$tmp/run" ] || { echo "FAIL: the refused run created its run directory"; exit 1; }
  [ ! -e "$tmp/trace.json" ] || { echo "FAIL: a partial trace file was left"; exit 1; }
  echo "ok: no Kineto in this LibTorch: $(grep '^error:' "$tmp/err")"
else
  echo "FAIL: exit status $status"; tail -5 "$tmp/err"; exit 1
fi
