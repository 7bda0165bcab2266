#!/usr/bin/env bash
# One rank's failure ends the whole `switchyard train` job within 5 s, with parallel.timeout_s left at
# its default (300 s): a data path that is missing on one rank only (an MPMD launch: rank 1 gets
# another data.path, as a node-local disk would), and a rank that throws, stops (SIGSTOP) or exits at
# step 3 (SWITCHYARD_FAULT_INJECT). One "error: [rank r]" line; exit 2 for bad input, else non-zero.
# Usage: job_end_test.sh <switchyard> <mpiexec> <mpiexec flags...>
set -u
bin=$1; mpiexec=$2; shift 2; flags=("$@")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0; passed=0
cfg=$work/empty.yaml; : >"$cfg"
args=(--config "$cfg" --set model.d_model=32 --set model.n_layers=2 --set model.n_heads=2 --set model.seq_len=32
      --set model.moe.num_experts=4 --set data.synthetic_tokens=65536 --set train.steps=200
      --set train.global_batch=8 --set train.micro_batch=2 --set train.log_every=1 --set train.eval_every=0
      --set train.checkpoint_every=0 --set parallel.expert_parallel=2)

# name | expected status (any: non-zero) | expected stderr | most seconds after the fault | fault | mpiexec tail
check() {
  local name=$1 want=$2 text=$3 most=$4 fault=$5; shift 5
  local start end status secs
  rm -rf "$work/run"
  start=$(date +%s.%N)
  SWITCHYARD_FAULT_INJECT=$fault timeout 120 "$mpiexec" "${flags[@]}" "$@" >"$work/out" 2>&1
  status=$?
  end=$(date +%s.%N)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [ "$status" -eq 124 ] || [ "$status" -eq 0 ]; then
    echo "FAIL [$name]: status $status after $secs s"; failures=$((failures + 1))
  elif [ "$want" != any ] && [ "$status" -ne "$want" ]; then
    echo "FAIL [$name]: status $status, expected $want: $(grep -m1 '^error' "$work/out")"; failures=$((failures + 1))
  elif [ -n "$text" ] && ! grep -q "$text" "$work/out"; then
    echo "FAIL [$name]: output lacks '$text':"; grep -m3 -i error "$work/out"; failures=$((failures + 1))
  elif awk -v s="$secs" -v m="$most" 'BEGIN { exit !(s > m) }'; then
    echo "FAIL [$name]: the job took $secs s (at most $most)"; failures=$((failures + 1))
  else
    echo "ok   [$name]: status $status after $secs s (whole job, start-up included): $(grep -m1 '^error' "$work/out" | cut -c1-110)"
    passed=$((passed + 1))
  fi
}
one=(-n 1 "$bin" train "${args[@]}" --run-dir "$work/run")
# The bounds are for the whole job: start-up and the first steps take 1-2 s here, so the fault itself
# ends the job within 5 s (the stopped rank: 3 s of silence, parallel.peer_silence_s, then the abort).
check "data path missing on rank 1" 2 "^error: \[rank 1\] .*/absent.txt" 6 "" \
  "${one[@]}" : -n 1 "$bin" train "${args[@]}" --run-dir "$work/run" --set data.source=text --set data.path="$work/absent.txt"
check "rank 1 throws at step 3" 2 "^error: \[rank 1\] injected failure at step 3" 6 "throw_at_step:3@1" -n 2 "$bin" train "${args[@]}" --run-dir "$work/run"
check "rank 1 stops at step 3" any "^error: \[rank 0\] rank 1 sent no heartbeat for" 8 "stop_at_step:3@1" -n 2 "$bin" train "${args[@]}" --run-dir "$work/run"
check "rank 1 exits at step 3" any "" 6 "exit_at_step:3@1" -n 2 "$bin" train "${args[@]}" --run-dir "$work/run"
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
