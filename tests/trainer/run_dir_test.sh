#!/usr/bin/env bash
# Nothing a run wrote is lost (issue 24), through the CLI under mpiexec on 2 ranks (small model, CPU):
#   1. a broken `latest` (empty, missing, a directory, a symlink loop) resumes from the newest
#      checkpoint that verifies, overwriting nothing; one naming another run's checkpoint is refused;
#      --resume never refuses a directory with results unless --overwrite;
#   2. a second job on a busy run directory is refused at start naming the holder; a stale lock is
#      taken over;
#   3. a write that fails (injected: a full disk) while metrics are compacted, or while a checkpoint
#      is written, leaves the history and the previous checkpoint as they were;
#   4. 50 random byte flips in manifest.pb are each refused by `inspect` and by `train`, naming it;
#   5. a diverging run under nan_policy skip stops after train.max_consecutive_skips and publishes
#      no non-finite checkpoint.
# Usage: run_dir_test.sh <switchyard> <mpiexec> <mpiexec flags...>
source "$(dirname "$0")/tiny_run.sh"
common+=(--set parallel.expert_parallel=2)
train() {  # run_dir, extra args...
  local dir=$1; shift
  timeout 120 "$mpiexec" -n 2 "${flags[@]}" "$bin" train --config "$cfg" "${common[@]}" --run-dir "$dir" "$@" \
    >"$dir.log" 2>&1
}
sums() { (cd "$1/checkpoints" && find step_* -type f -exec md5sum {} + | sort); }

# 1. Broken pointers.
train "$work/base" || fail "base run: $(tail -n 3 "$work/base.log")"
for kind in empty missing directory loop; do
  run=$work/ptr_$kind
  cp -r "$work/base" "$run"
  before=$(sums "$run")
  case $kind in
    empty) : >"$run/checkpoints/latest" ;;
    missing) rm "$run/checkpoints/latest" ;;
    directory) rm "$run/checkpoints/latest"; mkdir "$run/checkpoints/latest" ;;
    loop) rm "$run/checkpoints/latest"; ln -s latest "$run/checkpoints/latest" ;;
  esac
  train "$run" --set train.steps=10; status=$?
  if [ "$status" -eq 0 ] && grep -q "resumed from .*step_00000008 at step 8" "$run.log" &&
     [ "$(echo "$before" | grep step_00000008)" = "$(sums "$run" | grep step_00000008)" ] &&
     [ "$(awk -F'[:,]' '{print $2}' "$run/metrics.jsonl" | tr '\n' ' ')" = "1 2 3 4 5 6 7 8 9 10 " ]; then
    ok "latest $kind: resumed from step 8, step 8 untouched, metrics 1-10 without a repeat"
  else
    fail "latest $kind: status $status: $(grep -E 'resumed|warn|error' "$run.log" | head -n 3)"
  fi
done
run=$work/ptr_outside; cp -r "$work/base" "$run"
echo "../../base/checkpoints/step_00000004" >"$run/checkpoints/latest"
train "$run" --set train.steps=10; status=$?
[ "$status" -eq 2 ] && grep -q "^error: .*checkpoints/latest names '../../base/checkpoints/step_00000004', outside" "$run.log" &&
  ok "latest naming another run's checkpoint: refused (exit 2)" || fail "outside pointer: status $status: $(grep error "$run.log")"
run=$work/ptr_none_verify; cp -r "$work/base" "$run"; : >"$run/checkpoints/latest"
for ck in "$run"/checkpoints/step_*; do printf '\x55' | dd of="$ck/rank_0.bin" bs=1 seek=40 conv=notrunc status=none; done
train "$run" --set train.steps=10; status=$?
[ "$status" -eq 2 ] && grep -q "^error: .*no checkpoint here verifies: .*checksum mismatch" "$run.log" &&
  ok "broken latest and no checkpoint verifies: refused (exit 2), naming the files" ||
  fail "no verifying checkpoint: status $status: $(grep error "$run.log")"
run=$work/never; cp -r "$work/base" "$run"; before=$(sums "$run")
train "$run" --resume never; status=$?
[ "$status" -eq 2 ] && grep -q "holds an earlier run's checkpoints; --resume never would train over them" "$run.log" &&
  [ "$before" = "$(sums "$run")" ] && ok "--resume never on a run with checkpoints: refused, nothing changed" ||
  fail "--resume never: status $status"
train "$run" --resume never --overwrite; status=$?
[ "$status" -eq 0 ] && grep -q "removed the earlier run's results" "$run.log" && [ "$(wc -l <"$run/metrics.jsonl")" -eq 8 ] &&
  ok "--resume never --overwrite: starts over" || fail "--overwrite: status $status"

# 1b. Metrics but no checkpoint: the same config launched again (a crash or requeue before the first
# checkpoint) starts over; another config is refused.
run=$work/early
SWITCHYARD_FAULT_INJECT=throw_at_step:3 train "$run" --set train.log_every=1
train "$run" --set train.log_every=1; status=$?
[ "$status" -eq 0 ] && grep -q "ended before its first checkpoint; starting over" "$run.log" &&
  [ "$(awk -F'[:,]' '{ print $2 }' "$run/metrics.jsonl" | tr '\n' ' ')" = "1 2 3 4 5 6 7 8 " ] &&
  ok "the same config relaunched before its first checkpoint starts over (metrics steps 1-8 once)" ||
  fail "early relaunch: status $status: $(grep -E 'error|warning' "$run.log" | head -n 2)"
rm -rf "$run/checkpoints"
train "$run" --set train.log_every=1 --set train.lr=0.001; status=$?
[ "$status" -eq 2 ] && grep -q "holds an earlier run's metrics but no checkpoint" "$run.log" &&
  ok "another config over metrics without a checkpoint is refused (exit 2)" || fail "other config: status $status"

# 2. One job per run directory.
run=$work/busy
train "$run" --set train.steps=400 --set train.checkpoint_every=100 &
first=$!
for _ in $(seq 1 100); do [ -s "$run/.lock" ] && [ -s "$run/metrics.jsonl" ] && break; sleep 0.2; done
train "$work/busy" --set train.seed=7; status=$?
cp "$run.log" "$work/second.log"
wait "$first"; first_status=$?
if [ "$status" -eq 2 ] && grep -q "^error: .*busy: in use by another training job (host .*, pid [0-9]*" "$work/second.log" &&
   [ "$first_status" -eq 0 ] && "$bin" inspect "$run/checkpoints/step_00000400" >/dev/null 2>&1; then
  ok "second job refused at start naming the holder; the first finished intact"
else
  fail "concurrent jobs: second status $status ($(grep error "$work/second.log")), first $first_status"
fi
run=$work/stale; cp -r "$work/base" "$run"; echo "$(hostname) 999999 1" >"$run/.lock"
train "$run" --set train.steps=10; status=$?
[ "$status" -eq 0 ] && ok "a stale lock (its process gone) is taken over" || fail "stale lock: status $status: $(grep error "$run.log")"

# 2b. The run directory deleted under a running job: rank 0 notices at the next step (its lock is
# gone) and the job ends, instead of writing checkpoints into a recreated directory without metrics.
run=$work/vanish
train "$run" --set train.steps=100000 --set train.checkpoint_every=0 &
job=$!
for _ in $(seq 300); do grep -q '"step":2,' "$run/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
# rm -rf loses a race with a file the job creates between rm's unlinks and its rmdir (seen under a
# loaded ctest -j2): delete until it is gone, as a user would; the check below is that the job
# recreates nothing after.
for _ in 1 2 3 4 5; do rm -rf "$run" 2>/dev/null; [ -e "$run" ] || break; sleep 0.05; done
start=$SECONDS
wait "$job"; status=$?
# (Deleted between the lock check and the step's metrics line, the write itself names the vanished file.)
[ "$status" -eq 1 ] && grep -qE "^error: .*(vanished or was replaced while the job ran|$run/metrics.jsonl: opening for append failed)" "$run.log" &&
  [ ! -e "$run" ] &&
  ok "a run directory deleted mid-run ends the job in $((SECONDS - start)) s (exit 1), nothing recreated" ||
  fail "vanished run directory: status $status, $(grep -m1 error "$run.log"), exists: $([ -e "$run" ] && echo yes)"

# 3. Failed writes lose nothing.
run=$work/diskfull; cp -r "$work/base" "$run"
echo "step_00000004" >"$run/checkpoints/latest"  # resume at 4: the metrics are compacted to steps 1-4
before=$(md5sum <"$run/metrics.jsonl")
SWITCHYARD_FAULT_INJECT=write_fail:metrics.jsonl train "$run"; status=$?
[ "$status" -eq 1 ] && grep -q "^error: .*metrics.jsonl: write failed (No space left on device)" "$run.log" &&
  [ "$before" = "$(md5sum <"$run/metrics.jsonl")" ] && [ -z "$(ls -A "$run" | grep '\.tmp')" ] &&
  ok "a failed metrics compaction leaves metrics.jsonl whole (exit 1, file named)" ||
  fail "metrics compaction: status $status: $(grep error "$run.log"), md5 changed: $([ "$before" = "$(md5sum <"$run/metrics.jsonl")" ] || echo yes)"
run=$work/ckptfull; cp -r "$work/base" "$run"; before=$(sums "$run")
SWITCHYARD_FAULT_INJECT=write_fail:manifest.pb train "$run" --set train.steps=12; status=$?
[ "$status" -eq 1 ] && [ "$(cat "$run/checkpoints/latest")" = "step_00000008" ] && [ "$before" = "$(sums "$run")" ] &&
  ok "a failed checkpoint write leaves latest and the previous checkpoints as they were (exit 1)" ||
  fail "checkpoint write failure: status $status, latest $(cat "$run/checkpoints/latest")"

# 4. Manifest byte flips.
ck=$work/base/checkpoints/step_00000008
size=$(stat -c %s "$ck/manifest.pb")
refused=0
for i in $(seq 1 50); do
  cp "$ck/manifest.pb" "$work/manifest.orig"
  offset=$(( (i * 7919 + 13) % size ))
  byte=$(( (i * 37 + 1) % 255 + 1 ))
  orig=$(od -An -tu1 -j "$offset" -N1 "$ck/manifest.pb" | tr -d ' ')
  new=$(( orig ^ byte ))
  printf "$(printf '\\x%02x' "$new")" | dd of="$ck/manifest.pb" bs=1 seek="$offset" conv=notrunc status=none
  "$bin" inspect "$ck" >/dev/null 2>"$work/err"; st=$?
  if [ "$st" -eq 2 ] && grep -q "^error: .*step_00000008/manifest.pb: " "$work/err"; then
    refused=$((refused + 1))
  else
    echo "  flip $i at byte $offset not refused (status $st): $(cat "$work/err")"
  fi
  cp "$work/manifest.orig" "$ck/manifest.pb"
done
[ "$refused" -eq 50 ] && ok "50 manifest byte flips: 50 refused by inspect, manifest.pb named" || fail "manifest flips: $refused of 50 refused"
run=$work/flip; cp -r "$work/base" "$run"
printf '\x01' | dd of="$run/checkpoints/step_00000008/manifest.pb" bs=1 seek=$((size / 2)) conv=notrunc status=none
train "$run" --set train.steps=10; status=$?
[ "$status" -eq 2 ] && grep -q "manifest.pb: checksum mismatch in the manifest" "$run.log" &&
  ok "train refuses a flipped manifest (exit 2)" || fail "train on a flipped manifest: status $status"

# 5. A diverging run stops.
run=$work/diverge
train "$run" --set train.lr=10 --set train.weight_decay=10 --set train.steps=30 --set train.checkpoint_every=2 \
  --set train.max_consecutive_skips=3; status=$?
bad=0
for ck in "$run"/checkpoints/step_*; do [ -d "$ck" ] && { "$bin" inspect "$ck" >/dev/null 2>&1 || bad=1; }; done
if [ "$status" -eq 2 ] && grep -qE "^error: .*(steps in a row had a non-finite loss or gradient \(train.max_consecutive_skips 3\)|parameters are not finite; not checkpointed)" "$run.log" && [ "$bad" -eq 0 ]; then
  ok "a diverging run stops with an error (exit 2): $(grep -m1 '^error' "$run.log" | cut -c1-120)"
else
  fail "diverging run: status $status: $(grep -m1 error "$run.log")"
fi

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
