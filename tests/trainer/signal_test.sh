#!/usr/bin/env bash
# Preemption (train.checkpoint_on_signal): SIGUSR1 or SIGTERM to one rank of a running job makes every
# rank finish the step, save a checkpoint and exit 0; resumed (mid-way through a WSD decay), the run
# continues the uninterrupted run's losses and learning rates bitwise. Also: SIGUSR1 to mpiexec (which forwards it), and the option off (the signal
# ends the job, non-zero, no checkpoint beyond the schedule's).
# Usage: signal_test.sh <switchyard> <mpiexec> <mpiexec flags...>
source "$(dirname "$0")/tiny_run.sh"

train() {  # run_dir, extra args...
  local dir=$1; shift
  timeout 300 "$mpiexec" -n 2 "${flags[@]}" "$bin" train --config "$cfg" "${common[@]}" \
    --set parallel.expert_parallel=2 --set train.checkpoint_every=0 --run-dir "$dir" "$@" >>"$dir.log" 2>&1
}
# step, loss and learning rate of each metrics line
losses() { awk -F'[:,]' '{ match($0, /"lr":[^,]*/); print $2, $4, substr($0, RSTART, RLENGTH) }' "$1/metrics.jsonl"; }
# Case 1 runs the WSD schedule with its decay from step 3 on, so the resume at step 5 is mid-decay.
wsd=(--set train.lr_schedule=wsd --set train.decay_fraction=0.75 --set train.decay_shape=1-sqrt)

# 1. A signal raised inside rank 1 at step 5 (deterministic): a checkpoint of step 5, exit 0, resume.
train "$work/full" "${wsd[@]}" || fail "uninterrupted run: $(tail -n 3 "$work/full.log")"
SWITCHYARD_FAULT_INJECT=usr1_at_step:5@1 train "$work/signalled" "${wsd[@]}"
status=$?
[ "$status" -eq 0 ] && ok "signalled run exits 0" || fail "signalled run exit $status: $(tail -n 3 "$work/signalled.log")"
[ "$(cat "$work/signalled/checkpoints/latest" 2>/dev/null)" = "step_00000005" ] &&
  ok "latest names the step-5 checkpoint written on the signal" || fail "latest: $(ls "$work/signalled/checkpoints" 2>&1)"
grep -q "stop signal .* received: checkpoint of step 5 saved" "$work/signalled.log" && ok "the exit is explained" ||
  fail "no stop-signal line: $(tail -n 2 "$work/signalled.log")"
train "$work/signalled" "${wsd[@]}" || fail "resume: $(tail -n 3 "$work/signalled.log")"
if cmp -s <(losses "$work/full") <(losses "$work/signalled"); then
  ok "resumed mid-decay (wsd): losses and learning rates equal the uninterrupted run bitwise"
else fail "losses differ:"; diff <(losses "$work/full") <(losses "$work/signalled"); fi

# 2. Real signals from outside, to one rank (SIGTERM) and to mpiexec (SIGUSR1, forwarded), mid-run.
long=(--set train.steps=100000 --set model.n_layers=1)
for how in rank-TERM mpiexec-USR1; do
  dir=$work/$how
  train "$dir" "${long[@]}" &
  job=$!
  for _ in $(seq 300); do grep -q '"step":3,' "$dir/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
  if [ "$how" = rank-TERM ]; then
    target=$(pgrep -f -- "--run-dir $dir" | while read -r p; do
      [ "$(cat /proc/"$p"/comm 2>/dev/null)" = switchyard ] && echo "$p"; done | head -n 1)
    kill -TERM "$target"
  else
    target=$(pgrep -f -- "--run-dir $dir" | while read -r p; do
      [ "$(cat /proc/"$p"/comm 2>/dev/null)" != switchyard ] && [ "$(cat /proc/"$p"/comm)" != timeout ] && echo "$p"; done | head -n 1)
    kill -USR1 "$target"
  fi
  start=$(date +%s.%N)
  wait "$job"
  status=$?
  took=$(echo "$(date +%s.%N) - $start" | bc)
  [ "$status" -eq 0 ] && ok "$how: exit 0 after ${took}s" || fail "$how: exit $status: $(tail -n 3 "$dir.log")"
  step=$(sed 's/step_0*//' "$dir/checkpoints/latest" 2>/dev/null)
  [ -n "$step" ] && [ "$step" -ge 3 ] && ok "$how: checkpoint of step $step" || fail "$how: no checkpoint"
  awk -v t="$took" 'BEGIN { exit !(t < 10) }' && ok "$how: within 10 s" || fail "$how: took ${took}s"
done

# 3. Off: the signal ends the job as before (non-zero), and nothing is saved.
SWITCHYARD_FAULT_INJECT=usr1_at_step:5@1 train "$work/off" --set train.checkpoint_on_signal=false
status=$?
[ "$status" -ne 0 ] && ok "checkpoint_on_signal false: the signal ends the job (exit $status)" || fail "off: exit 0"
[ ! -e "$work/off/checkpoints/latest" ] && ok "checkpoint_on_signal false: no checkpoint" || fail "off: a checkpoint was saved"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
