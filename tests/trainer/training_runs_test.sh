#!/usr/bin/env bash
# End-to-end training runs through the CLI under mpiexec (small model, CPU):
#   1. resume exactness: a run killed (SIGKILL) while writing its step-8 checkpoint, resumed from
#      step 4 on the same ranks, reproduces the uninterrupted run's losses bitwise;
#   2. re-sharding: 4 ranks EP 4 -> 2 ranks EP 2, and 2 -> 4, continue the loss within 1e-5 rel;
#   3. corrupt and truncated checkpoints are refused (exit 2, file and checksum named), nothing deleted;
#   also plans: a plan file, the planner's plan from a trace, and re-planning mid-run keep the losses.
# Usage: training_runs_test.sh <switchyard> <mpiexec> <mpiexec flags...>
source "$(dirname "$0")/tiny_run.sh"

train() {  # ranks, ep, run_dir, extra args...
  local n=$1 ep=$2 dir=$3; shift 3
  timeout 300 "$mpiexec" -n "$n" "${flags[@]}" "$bin" train --config "$cfg" "${common[@]}" \
    --set parallel.expert_parallel="$ep" --run-dir "$dir" "$@" >"$dir.log" 2>&1
}
losses() {  # run_dir first_step -> "step loss" lines from metrics.jsonl
  awk -v from="$2" -F'[:,]' '{ if ($2 + 0 >= from) print $2, $4 }' "$1/metrics.jsonl"
}
compare() {  # file_a file_b rel_tol label
  if awk -v tol="$3" 'NR == FNR { a[$1] = $2; next } { n++; d = $2 - a[$1]; if (d < 0) d = -d;
       if (!($1 in a) || d > tol * ($2 < 0 ? -$2 : $2)) { bad = 1; print "  step " $1 ": " a[$1] " vs " $2 } }
       END { exit (bad || n == 0) }' "$1" "$2"; then ok "$4"; else fail "$4"; fi
}

# 1. Resume exactness on 2 ranks.
train 2 2 "$work/full" || fail "uninterrupted run: $(tail -n 3 "$work/full.log")"
SWITCHYARD_FAULT_INJECT=kill_in_checkpoint:8 train 2 2 "$work/killed"
status=$?
[ "$status" -ne 0 ] || fail "the fault-injected run should have died"
[ "$(cat "$work/killed/checkpoints/latest")" = "step_00000004" ] && ok "latest still names step 4 after the kill" ||
  fail "latest after the kill: $(cat "$work/killed/checkpoints/latest" 2>/dev/null)"
train 2 2 "$work/killed" || fail "resume after kill: $(tail -n 3 "$work/killed.log")"
grep -q "resumed from .*step_00000004 at step 4" "$work/killed.log" && ok "resumed from the step-4 checkpoint" ||
  fail "did not resume from step 4: $(grep -m1 resumed "$work/killed.log")"
losses "$work/full" 1 >"$work/full.txt"; losses "$work/killed" 1 >"$work/killed.txt"
if cmp -s "$work/full.txt" "$work/killed.txt"; then ok "resumed losses equal the uninterrupted run bitwise (steps 1-8, no step repeated)"
else fail "resumed losses differ:"; diff "$work/full.txt" "$work/killed.txt"; fi

grep -q '"loss_z_loss_moe1":' "$work/full/metrics.jsonl" && grep -q '"loss_z_loss":' "$work/full/metrics.jsonl" &&
  ok "metrics carry every routing loss per MoE layer and summed" || fail "per-layer loss metrics missing"

# 1b. Two launches of one CPU config are equal in every bit (SMILE's two-level exchange on 4 ranks).
smile=(--set model.moe.router.kind=bilevel --set model.moe.router.groups=2 --set model.moe.top_k=1
       --set parallel.dispatcher=hierarchical --set parallel.ranks_per_node=2 --set train.checkpoint_every=0)
train 4 4 "$work/launch1" "${smile[@]}" && train 4 4 "$work/launch2" "${smile[@]}" || fail "smile launches: $(tail -n 3 "$work/launch1.log")"
if cmp -s <(losses "$work/launch1" 1) <(losses "$work/launch2" 1) && [ -s "$work/launch1/metrics.jsonl" ]; then
  ok "two launches of one CPU config give the same losses, bitwise"
else
  fail "two launches differ:"; diff <(losses "$work/launch1" 1) <(losses "$work/launch2" 1)
fi

# 2. Re-sharding: 4 ranks EP 4 <-> 2 ranks EP 2.
train 4 4 "$work/full4" || fail "4-rank run: $(tail -n 3 "$work/full4.log")"
losses "$work/full4" 5 >"$work/full4.txt"
mkdir -p "$work/a/checkpoints" "$work/b/checkpoints"
cp -r "$work/full4/checkpoints/step_00000004" "$work/a/checkpoints/"; echo step_00000004 >"$work/a/checkpoints/latest"
train 2 2 "$work/a" || fail "resume 4->2: $(tail -n 3 "$work/a.log")"
losses "$work/a" 5 >"$work/a.txt"
compare "$work/full4.txt" "$work/a.txt" 1e-5 "re-shard 4 ranks EP 4 -> 2 ranks EP 2: losses of steps 5-8 within 1e-5"
cp -r "$work/full/checkpoints/step_00000004" "$work/b/checkpoints/"; echo step_00000004 >"$work/b/checkpoints/latest"
train 4 4 "$work/b" || fail "resume 2->4: $(tail -n 3 "$work/b.log")"
losses "$work/full" 5 >"$work/full2.txt"; losses "$work/b" 5 >"$work/b.txt"
compare "$work/full2.txt" "$work/b.txt" 1e-5 "re-shard 2 ranks EP 2 -> 4 ranks EP 4: losses of steps 5-8 within 1e-5"

# 2b. A placement plan (a permutation of experts over ranks) changes no math; a contiguous checkpoint
# resumes under it (experts are addressed by global id).
printf 'expert_parallel: 2\nlayers:\n  - [1, 0, 0, 1]\n  - [0, 1, 1, 0]\n' >"$work/plan.yaml"
train 2 2 "$work/planned" --set parallel.placement="$work/plan.yaml" || fail "planned run: $(tail -n 3 "$work/planned.log")"
losses "$work/planned" 1 >"$work/planned.txt"
compare "$work/full.txt" "$work/planned.txt" 1e-5 "a permuted placement plan gives the contiguous losses (steps 1-8, 1e-5)"
mkdir -p "$work/replanned/checkpoints"
cp -r "$work/full/checkpoints/step_00000004" "$work/replanned/checkpoints/"; echo step_00000004 >"$work/replanned/checkpoints/latest"
train 2 2 "$work/replanned" --set parallel.placement="$work/plan.yaml" || fail "resume under a plan: $(tail -n 3 "$work/replanned.log")"
losses "$work/replanned" 5 >"$work/replanned.txt"; losses "$work/full" 5 >"$work/full5.txt"
compare "$work/full5.txt" "$work/replanned.txt" 1e-5 "a contiguous checkpoint resumes under a different plan (steps 5-8, 1e-5)"

# 2c. Trace -> plan -> train: the planner's plan file loads, keeps the losses, and the report has its keys.
timeout 120 "$mpiexec" -n 2 "${flags[@]}" "$bin" trace --config "$cfg" "${common[@]}" --set parallel.expert_parallel=2 \
  --checkpoint "$work/full/checkpoints/step_00000008" --tokens 2048 --out "$work/trace.pb" >"$work/trace.log" 2>&1 ||
  fail "trace: $(tail -n 3 "$work/trace.log")"
"$bin" plan --trace "$work/trace.pb" --ranks 2 --ranks-per-node 1 --solver greedy --out "$work/auto_plan.yaml" \
  >"$work/plan.json" 2>&1 || fail "plan: $(cat "$work/plan.json")"
for key in objective_contiguous objective_greedy objective_ilp bound gap solve_s predicted_inter_node_bytes \
           predicted_intra_node_bytes predicted_inter_node_bytes_contiguous predicted_intra_node_bytes_contiguous \
           load_max_over_mean; do
  grep -q "\"$key\":" "$work/plan.json" || fail "plan report lacks $key: $(cat "$work/plan.json")"
done
train 2 2 "$work/autoplanned" --set parallel.placement="$work/auto_plan.yaml" ||
  fail "run with the planner's plan: $(tail -n 3 "$work/autoplanned.log")"
losses "$work/autoplanned" 1 >"$work/autoplanned.txt"
compare "$work/full.txt" "$work/autoplanned.txt" 1e-5 "trace -> plan -> train: the planner's plan keeps the losses (1e-5)"

# 2d. Re-planning during training (4 ranks as 2 emulated nodes): experts move at steps 4 (through a
# checkpoint), the losses stay those of the contiguous 4-rank run, the plan is written and logged.
train 4 4 "$work/replan" --set parallel.ranks_per_node=2 --set parallel.dispatcher=hierarchical \
  --set parallel.replan_every=4 --set parallel.replan_time_limit_s=2 || fail "replan run: $(tail -n 3 "$work/replan.log")"
grep -q "re-planned expert placement at step 4" "$work/replan.log" && [ -f "$work/replan/plans/step_00000004.yaml" ] &&
  grep -q '"replan_predicted_inter_node_bytes_after":' "$work/replan/metrics.jsonl" &&
  ok "re-planned at step 4: logged, plan written, predicted bytes in metrics" || fail "re-plan not reported"
losses "$work/replan" 1 >"$work/replan.txt"; losses "$work/full4" 1 >"$work/full4all.txt"
compare "$work/full4all.txt" "$work/replan.txt" 1e-5 "re-planning mid-run keeps the losses of the contiguous run (1e-5)"

# 3. Corrupt and truncated checkpoints.
ck=$work/full/checkpoints/step_00000008
"$bin" inspect "$ck" >/dev/null 2>&1 && ok "inspect verifies a good checkpoint" || fail "inspect on a good checkpoint"
before=$(cd "$work/full" && find . -type f ! -name '.lock' -exec cksum {} + | sort)
printf '\x55' | dd of="$ck/rank_0.bin" bs=1 seek=100 conv=notrunc status=none
"$bin" inspect "$ck" >/dev/null 2>"$work/err"; status=$?
[ "$status" -eq 2 ] && grep -q "^error: .*rank_0.bin: checksum mismatch in tensor .*expected crc32c" "$work/err" &&
  ok "corrupt byte refused: $(cat "$work/err")" || fail "corrupt checkpoint: status $status: $(cat "$work/err")"
train 2 2 "$work/full" --set train.steps=12; status=$?
[ "$status" -eq 2 ] && grep -q "checksum mismatch" "$work/full.log" && ok "training refuses to resume from it (exit 2)" ||
  fail "resume from a corrupt checkpoint: status $status"
truncate -s 50 "$work/full/checkpoints/step_00000004/rank_1.bin"
"$bin" inspect "$work/full/checkpoints/step_00000004" >/dev/null 2>"$work/err"; status=$?
[ "$status" -eq 2 ] && grep -q "rank_1.bin: truncated" "$work/err" && ok "truncated file refused: $(cat "$work/err")" ||
  fail "truncated checkpoint: status $status: $(cat "$work/err")"
after=$(cd "$work/full" && find . -type f ! -name 'rank_0.bin' ! -name 'rank_1.bin' ! -name '*.log' ! -name '.lock' -exec cksum {} + | sort)
before_kept=$(echo "$before" | grep -v 'rank_0.bin\|rank_1.bin')
[ "$(echo "$after" | grep -v events.out)" = "$(echo "$before_kept" | grep -v events.out)" ] &&
  ok "nothing deleted or overwritten by the refused runs" || fail "files changed after a refused resume"

# 4. NaN policy: skip the step and count it, or stop with an error.
SWITCHYARD_FAULT_INJECT=nan_at_step:3 train 2 2 "$work/nan" --set train.checkpoint_every=0
status=$?
[ "$status" -eq 0 ] && tail -n 1 "$work/nan/metrics.jsonl" | grep -q '"skipped_steps":1' &&
  ok "nan_policy skip: the NaN step is skipped and counted, training goes on" || fail "nan skip: status $status"
SWITCHYARD_FAULT_INJECT=nan_at_step:3 train 2 2 "$work/nan2" --set train.nan_policy=error --set train.checkpoint_every=0
status=$?
[ "$status" -eq 2 ] && grep -q "^error: .*step 3: non-finite loss or gradient (train.nan_policy error)" "$work/nan2.log" &&
  ok "nan_policy error: exit 2 naming the step" || fail "nan error: status $status: $(grep error "$work/nan2.log")"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
