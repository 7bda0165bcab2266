#!/usr/bin/env bash
# Hugging Face interop through the CLI, on 2 ranks (issue 21):
#   1. a Qwen3-MoE-family run (expert_parallel 2) exported, imported, evaluated: the same loss (1e-6)
#      at 1 and 2 ranks; the imported checkpoint resumes training at expert_parallel 2 and 1;
#   2. export under mpirun writes once (rank 0);
#   3. corrupt safetensors (truncated, bad header length, a missing tensor) are refused with one
#      `error:` line naming the file and the tensor, exit 2, nothing written.
# Usage: interop_cli_test.sh <switchyard> <mpiexec> <mpiexec flags...>
source "$(dirname "$0")/../trainer/tiny_run.sh"
family=(--set model.family=qwen3_moe --set model.qk_norm=head --set model.head_dim=24 --set model.n_kv_heads=1
        --set model.moe.every=2 --set model.tie_embeddings=false --set model.n_layers=3)
run() {  # ranks, log, args...
  local ranks=$1 log=$2; shift 2
  timeout 120 "$mpiexec" -n "$ranks" "${flags[@]}" "$bin" "$@" >"$log" 2>&1
}
loss_of() { grep -o '"loss":[0-9.e+-]*' "$1" | head -n 1 | cut -d: -f2; }
close() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-6 * abs(b))" "$1" "$2"; }

# 1. Round trip.
run 2 "$work/train.log" train --config "$cfg" "${common[@]}" "${family[@]}" --set parallel.expert_parallel=2 \
  --run-dir "$work/run" || fail "training: $(tail -n 3 "$work/train.log")"
ckpt=$work/run/checkpoints/step_00000008
run 2 "$work/export.log" export --checkpoint "$ckpt" --out "$work/hf" || fail "export: $(tail -n 3 "$work/export.log")"
if [ "$(grep -c '"export"' "$work/export.log")" = 1 ] && [ -f "$work/hf/model.safetensors" ] && [ -f "$work/hf/config.json" ]; then
  ok "export under mpirun: written once (config.json, model.safetensors)"
else
  fail "export under mpirun: $(cat "$work/export.log")"
fi
cp "$work/run/config.yaml" "$work/base.yaml"
"$bin" import --hf "$work/hf" --config "$work/imported.yaml" --out "$work/imported" --base-config "$work/base.yaml" \
  >"$work/import.log" 2>&1 || fail "import: $(tail -n 3 "$work/import.log")"
run 2 "$work/eval_a.log" eval --config "$work/base.yaml" --checkpoint "$ckpt"
run 2 "$work/eval_b.log" eval --config "$work/imported.yaml" --checkpoint "$work/imported"
run 1 "$work/eval_c.log" eval --config "$work/imported.yaml" --set parallel.expert_parallel=1 --checkpoint "$work/imported"
a=$(loss_of "$work/eval_a.log"); b=$(loss_of "$work/eval_b.log"); c=$(loss_of "$work/eval_c.log")
if [ -n "$a" ] && [ -n "$b" ] && [ -n "$c" ] && close "$b" "$a" && close "$c" "$a"; then
  ok "export -> import -> eval: loss $a (trained), $b (imported, 2 ranks), $c (imported, 1 rank)"
else
  fail "export -> import -> eval: '$a' '$b' '$c'"
fi
for ep in 2 1; do
  run 2 "$work/resume_$ep.log" train --config "$work/imported.yaml" --set parallel.expert_parallel=$ep --set train.steps=3 \
    --set train.checkpoint_every=0 --run-dir "$work/finetune_$ep" --resume "$work/imported"
  if [ $? -eq 0 ] && grep -q "initialized from the weights-only checkpoint" "$work/resume_$ep.log" &&
     [ "$(wc -l <"$work/finetune_$ep/metrics.jsonl")" -ge 3 ]; then
    ok "train --resume <imported> at expert_parallel $ep: 3 steps from step 0"
  else
    fail "train --resume <imported> at expert_parallel $ep: $(tail -n 3 "$work/resume_$ep.log")"
  fi
done

# 3. Corrupt files: one error line naming the file (and tensor), exit 2, no output left behind.
corrupt() {  # name, how (a python snippet on bytes b), expected text
  local dir=$work/bad_$1
  cp -r "$work/hf" "$dir"
  python3 - "$dir/model.safetensors" "$2" <<'PY'
import sys, struct, json
path, how = sys.argv[1], sys.argv[2]
b = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
header = json.loads(b[8:8 + n])
if how == "truncate":
    b = b[: len(b) - 100]
elif how == "length":
    b[:8] = struct.pack("<Q", len(b) * 2)
elif how == "missing":
    del header["model.norm.weight"]
    text = json.dumps(header).encode()
    b = struct.pack("<Q", len(text)) + text + b[8 + n:]
elif how == "dtype":
    header["model.norm.weight"]["dtype"] = "F8_E4M3"
    text = json.dumps(header).encode()
    b = struct.pack("<Q", len(text)) + text + b[8 + n:]
open(path, "wb").write(bytes(b))
PY
  "$bin" import --hf "$dir" --config "$dir.yaml" --out "$dir.ckpt" >"$dir.out" 2>"$dir.err"
  local status=$?
  if [ "$status" -eq 2 ] && [ "$(wc -l <"$dir.err")" -eq 1 ] && grep -q "^error: .*$3" "$dir.err" &&
     [ ! -e "$dir.yaml" ] && [ ! -e "$dir.ckpt" ]; then
    ok "corrupt safetensors ($1): exit 2, $(cat "$dir.err")"
  else
    fail "corrupt safetensors ($1): status $status, $(cat "$dir.err")"
  fi
}
corrupt truncate truncate "bad_truncate/model.safetensors: bad header: .* bytes after the last tensor\|bad_truncate/model.safetensors: tensor .*past the end"
corrupt length length "bad_length/model.safetensors: bad header length"
corrupt missing missing "bad_missing/model.safetensors: bad header: the tensors' bytes leave a gap\|missing tensor model.norm.weight"
corrupt dtype dtype "bad_dtype/model.safetensors: tensor model.norm.weight: unsupported dtype 'F8_E4M3'"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
