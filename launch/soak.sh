#!/usr/bin/env bash
# Soak: trains under mpirun while killing and signalling ranks at random moments, restarting each time,
# then checks that nothing was lost: every checkpoint left verifies (`switchyard inspect`), the run's
# per-step losses equal an uninterrupted run's bitwise, and so does the final model's validation loss
# (`switchyard eval`). Prints one summary line; exit 0 only if all of that holds.
#
#   launch/soak.sh [--minutes M] [--ranks N] [--steps S] [--seed R] [--config FILE] [--work DIR]
#
# Each round starts the job (it resumes), waits 2-12 s, then sends one of its ranks SIGKILL (a crash:
# the steps since the last checkpoint are redone), SIGTERM or SIGUSR1 (preemption: a checkpoint of the
# current step, exit 0). Rounds stop at --minutes or when the run is complete; the run is then
# finished without faults.
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=10 ranks=2 steps=300 seed=1 config=configs/quickstart.yaml work=""
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    *) echo "error: soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=build/bin/switchyard
[ -x "$bin" ] || { echo "error: $bin missing: run launch/build.sh first" >&2; exit 2; }
[ -n "$work" ] || work=$(mktemp -d /tmp/switchyard_soak.XXXXXX)
mkdir -p "$work"
mpi=(mpiexec -n "$ranks")
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
mpi+=(--oversubscribe)
sets=(--set train.steps="$steps" --set train.checkpoint_every=25 --set train.keep_checkpoints=3
      --set train.log_every=1 --set train.eval_every=0 --set parallel.timeout_s=60)
RANDOM=$seed

train() {  # run_dir
  "${mpi[@]}" "$bin" train --config "$config" "${sets[@]}" --run-dir "$1" >>"$1.log" 2>&1
}
losses() { awk -F'[:,]' '{ print $2, $4 }' "$1/metrics.jsonl"; }
final_eval() {
  "$bin" eval --config "$config" "${sets[@]}" --set parallel.expert_parallel=1 \
    --checkpoint "$1/checkpoints/$(cat "$1/checkpoints/latest")" 2>/dev/null | tail -n 1
}

echo "soak: $ranks ranks, $steps steps of $config, faults for $minutes min, seed $seed, in $work"
train "$work/reference" || { echo "error: the uninterrupted run failed: $(tail -n 3 "$work/reference.log")" >&2; exit 1; }

declare -A faults=([KILL]=0 [TERM]=0 [USR1]=0)
corrupt=0 rounds=0 slowest_end=0
deadline=$((SECONDS + 60 * minutes))
while [ "$SECONDS" -lt "$deadline" ]; do
  [ "$(cat "$work/soak/checkpoints/latest" 2>/dev/null)" = "$(printf 'step_%08d' "$steps")" ] && break
  rounds=$((rounds + 1))
  train "$work/soak" &
  job=$!
  sleep "$((2 + RANDOM % 11))"
  signal=$(echo KILL TERM USR1 | tr ' ' '\n' | sed -n "$((1 + RANDOM % 3))p")
  pids=$(pgrep -f -- "--run-dir $work/soak" | while read -r p; do
    [ "$(cat /proc/"$p"/comm 2>/dev/null)" = switchyard ] && echo "$p"; done)
  target=$(echo "$pids" | shuf -n 1 --random-source=<(yes "$RANDOM"))
  start=$SECONDS
  if [ -n "$target" ] && kill -"$signal" "$target" 2>/dev/null; then faults[$signal]=$((faults[$signal] + 1)); fi
  wait "$job"
  [ $((SECONDS - start)) -gt "$slowest_end" ] && slowest_end=$((SECONDS - start))
  for c in "$work"/soak/checkpoints/step_*; do
    [ -d "$c" ] || continue
    "$bin" inspect "$c" >/dev/null 2>&1 || { echo "corrupt checkpoint after round $rounds ($signal): $c"; corrupt=$((corrupt + 1)); }
  done
done
train "$work/soak" || { echo "error: finishing the soak run failed: $(tail -n 3 "$work/soak.log")" >&2; exit 1; }

same_losses=no; same_model=no
cmp -s <(losses "$work/reference") <(losses "$work/soak") && same_losses=yes
a=$(final_eval "$work/reference"); b=$(final_eval "$work/soak")
[ -n "$a" ] && [ "$a" = "$b" ] && same_model=yes
echo "soak: $rounds rounds in $SECONDS s (SIGKILL ${faults[KILL]}, SIGTERM ${faults[TERM]}, SIGUSR1 ${faults[USR1]}" \
     "delivered); slowest job end after a fault ${slowest_end} s; corrupt checkpoints $corrupt;" \
     "losses equal to the uninterrupted run: $same_losses; final validation $b vs $a: $same_model"
[ "$corrupt" -eq 0 ] && [ "$same_losses" = yes ] && [ "$same_model" = yes ]
