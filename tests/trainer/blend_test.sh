#!/usr/bin/env bash
# data.blend through the CLI (issue 22): two Megatron corpora at 0.7 / 0.3 train with the same
# per-step losses at 1, 2 and 4 ranks (the same sequences in the same order; losses to 1e-5, the
# rank count changing only the summation order), resume exactly, and a bad blend is one error line;
# data.reset_at_eod trains on them.
# Usage: blend_test.sh <switchyard> <mpiexec> <mpiexec flags...>
source "$(dirname "$0")/tiny_run.sh"
python3 - "$work" <<'PY'
import random, struct, sys
def write(prefix, docs):
    with open(prefix + ".bin", "wb") as b:
        for d in docs:
            b.write(struct.pack(f"<{len(d)}H", *d))
    n = len(docs)
    with open(prefix + ".idx", "wb") as i:
        i.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, n, n + 1))
        i.write(struct.pack(f"<{n}i", *[len(d) for d in docs]))
        p = 0
        for d in docs:
            i.write(struct.pack("<q", p)); p += 2 * len(d)
        i.write(struct.pack(f"<{n + 1}q", *range(n + 1)))
r = random.Random(5)
write(sys.argv[1] + "/a", [[r.randrange(0, 120) for _ in range(r.randrange(50, 400))] for _ in range(200)])
write(sys.argv[1] + "/b", [[r.randrange(120, 256) for _ in range(r.randrange(50, 400))] for _ in range(200)])
PY
blend=(--set data.source=megatron --set "data.blend=0.7 $work/a 0.3 $work/b" --set train.checkpoint_every=4)
run() {  # ranks, run dir, extra...
  local n=$1 dir=$2; shift 2
  timeout 120 "$mpiexec" -n "$n" "${flags[@]}" "$bin" train --config "$cfg" "${common[@]}" "${blend[@]}" --run-dir "$dir" "$@" \
    >"$dir.log" 2>&1
}
losses() { python3 -c "import json,sys; print(' '.join('%.6f' % json.loads(l)['lm_loss'] for l in open(sys.argv[1])))" "$1/metrics.jsonl"; }
for n in 1 2 4; do run "$n" "$work/r$n" || fail "blend at $n ranks: $(grep -m1 error "$work/r$n.log")"; done
if python3 - "$work" <<'PY'
import json, sys
runs = [[json.loads(l)["lm_loss"] for l in open(f"{sys.argv[1]}/r{n}/metrics.jsonl")] for n in (1, 2, 4)]
assert len(runs[0]) == 8 and all(len(r) == 8 for r in runs), [len(r) for r in runs]
for r in runs[1:]:
    assert all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(runs[0], r)), (runs[0], r)
PY
then ok "blend 0.7/0.3: the same 8 step losses at 1, 2 and 4 ranks ($(losses "$work/r1" | cut -d' ' -f1-3) ...)"
else fail "blend losses differ across rank counts: 1: $(losses "$work/r1") 2: $(losses "$work/r2") 4: $(losses "$work/r4")"; fi
grep -q "data: .*/a\.{bin,idx}.*(weight 0.700000)" "$work/r1.log" && grep -q "data: .*/b\.{bin,idx}.*(weight 0.300000)" "$work/r1.log" &&
  ok "the log names each corpus with its weight" || fail "no weights in the log: $(grep 'data:' "$work/r1.log")"

# Resume: steps 5-8 from the step-4 checkpoint equal the uninterrupted run's.
cp -r "$work/r2" "$work/resume"
echo step_00000004 >"$work/resume/checkpoints/latest"
run 2 "$work/resume"
[ "$(losses "$work/resume")" = "$(losses "$work/r2")" ] && ok "resumed at step 4: losses 1-8 bitwise equal" ||
  fail "resume: $(losses "$work/resume") against $(losses "$work/r2")"

# data.reset_at_eod (token 0 of corpus a as the end of a document): trains, and the packed documents
# no longer see each other, so the losses differ from the plain run's.
run 2 "$work/eod" --set data.reset_at_eod=true --set data.eod_id=0 || fail "reset_at_eod: $(grep -m1 error "$work/eod.log")"
[ -f "$work/eod/metrics.jsonl" ] && [ "$(losses "$work/eod")" != "$(losses "$work/r2")" ] &&
  ok "data.reset_at_eod trains: $(losses "$work/eod" | cut -d' ' -f1,8) (plain: $(losses "$work/r2" | cut -d' ' -f1,8))" ||
  fail "reset_at_eod: $(losses "$work/eod" 2>&1)"
"$bin" train --config "$cfg" "${common[@]}" --set data.reset_at_eod=true --run-dir "$work/bad0" 2>"$work/bad0.err"; status=$?
[ "$status" -eq 2 ] && grep -q "^error: data.eod_id: data.reset_at_eod needs the end-of-document token" "$work/bad0.err" &&
  ok "reset_at_eod without eod_id: $(cat "$work/bad0.err")" || fail "reset_at_eod without eod_id: $status $(cat "$work/bad0.err")"

# Bad blends: one line naming data.blend.
"$bin" train --config "$cfg" "${common[@]}" --set data.source=megatron --set "data.blend=0.7 $work/a 0.3" \
  --run-dir "$work/bad1" 2>"$work/bad1.err"; status=$?
[ "$status" -eq 2 ] && grep -q "^error: data.blend: expected 'weight path' pairs" "$work/bad1.err" &&
  ok "an odd blend: $(cat "$work/bad1.err")" || fail "odd blend: $status $(cat "$work/bad1.err")"
"$bin" train --config "$cfg" "${common[@]}" --set data.source=megatron --set "data.blend=-1 $work/a 1 $work/b" \
  --run-dir "$work/bad2" 2>"$work/bad2.err"; status=$?
[ "$status" -eq 2 ] && grep -q "^error: data.blend: weight '-1' (before .*/a) is not a positive number" "$work/bad2.err" &&
  ok "a negative weight: $(cat "$work/bad2.err")" || fail "negative weight: $status $(cat "$work/bad2.err")"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
