#!/usr/bin/env bash
# Real disk faults on a small tmpfs the test mounts (root only; skipped, exit 77, where mounting is not
# allowed): a filesystem that fills up while a checkpoint is written, and one that turns read-only
# under a run. Either way the job ends with one error line naming the file, the previous checkpoint
# stays intact and verifies, `latest` never names a partial checkpoint, and once space is back the run
# resumes to the uninterrupted run's losses bitwise. (Injected write failures: run_dir_test.sh.)
# Usage: disk_faults_test.sh <switchyard> <mpiexec> <mpiexec flags...>
source "$(dirname "$0")/tiny_run.sh"
fs=$work/fs
mkdir -p "$fs"
if [ "$(id -u)" -ne 0 ] || ! mount -t tmpfs -o size=8m tmpfs "$fs" 2>/dev/null; then
  echo "skipped: cannot mount a tmpfs here (needs root and mount permission)"; exit 77
fi
trap 'umount "$fs" 2>/dev/null; rm -rf "$work"' EXIT
train() {  # run_dir, extra args...
  local dir=$1; shift
  timeout 120 "$mpiexec" -n 2 "${flags[@]}" "$bin" train --config "$cfg" "${common[@]}" \
    --set parallel.expert_parallel=2 --run-dir "$dir" "$@" >"$work/$(basename "$dir").log" 2>&1
}
losses() { awk -F'[:,]' '{ print $2, $4 }' "$1/metrics.jsonl"; }

train "$work/full" || fail "uninterrupted run: $(tail -n 3 "$work/full.log")"
# 1. Full disk: steps 1-4 (a checkpoint at 4; a rank then fails at step 5), then the filesystem is
# filled up to half a checkpoint's size below full, and the run goes on to its step-8 checkpoint.
run=$fs/run
SWITCHYARD_FAULT_INJECT=throw_at_step:5 train "$run"
[ "$(cat "$run/checkpoints/latest" 2>/dev/null)" = step_00000004 ] || fail "first half: $(tail -n 3 "$work/run.log")"
checkpoint_kib=$(du -sk "$run/checkpoints/step_00000004" | cut -f1)
free_kib=$(df -k --output=avail "$fs" | tail -n 1)
dd if=/dev/zero of="$fs/filler" bs=1k count=$((free_kib - checkpoint_kib / 2)) status=none
train "$run"; status=$?
[ "$status" -eq 1 ] && grep -q "^error: .*No space left on device" "$work/run.log" &&
  ok "a full disk during the step-8 checkpoint ends the job (exit 1): $(grep -m1 '^error' "$work/run.log" | cut -c1-150)" ||
  fail "full disk: status $status: $(grep -m1 error "$work/run.log")"
[ "$(cat "$run/checkpoints/latest")" = step_00000004 ] && "$bin" inspect "$run/checkpoints/step_00000004" >/dev/null 2>&1 &&
  ok "latest still names step 4, which verifies" || fail "after the full disk: latest $(cat "$run/checkpoints/latest")"
[ ! -e "$run/checkpoints/step_00000008" ] && ok "no partial step-8 checkpoint is left" ||
  fail "a step-8 checkpoint exists: $(ls "$run/checkpoints/step_00000008")"
rm -f "$fs/filler"
train "$run" || fail "resume after freeing space: $(tail -n 3 "$work/run.log")"
cmp -s <(losses "$work/full") <(losses "$run") && ok "resumed after the full disk: losses equal the uninterrupted run bitwise" ||
  fail "losses differ after the full disk"

# 2. Read-only: the filesystem is remounted read-only; a resume is refused at start, naming the path.
run2=$fs/run2
SWITCHYARD_FAULT_INJECT=throw_at_step:5 train "$run2"
[ "$(cat "$run2/checkpoints/latest" 2>/dev/null)" = step_00000004 ] || fail "read-only setup: $(tail -n 3 "$work/run2.log")"
before=$(cd "$run2" && find . -type f -exec md5sum {} + | sort)
mount -o remount,ro "$fs"
start=$SECONDS
train "$run2"; status=$?
mount -o remount,rw "$fs"
[ "$status" -ne 0 ] && [ "$(grep -c '^error' "$work/run2.log")" -ge 1 ] && grep -q "Read-only file system" "$work/run2.log" &&
  [ $((SECONDS - start)) -le 10 ] &&
  ok "a read-only run directory: refused in $((SECONDS - start)) s (exit $status): $(grep -m1 '^error' "$work/run2.log" | cut -c1-150)" ||
  fail "read-only: status $status: $(grep -m1 error "$work/run2.log")"
[ "$before" = "$(cd "$run2" && find . -type f -exec md5sum {} + | sort)" ] && ok "read-only: nothing changed" ||
  fail "read-only: files changed"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
