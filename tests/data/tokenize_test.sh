#!/usr/bin/env bash
# SentencePiece end to end (issue 22): spm_train makes a model from real text (the shared
# tinyshakespeare when present, else this repository's docs); `switchyard tokenize` writes a Megatron
# dataset whose token count equals spm_encode's plus one end-of-document token per document, and whose
# first document is spm_encode's first line; the dataset trains; JSONL input gives the same tokens;
# data.source text with data.tokenizer trains; bad input is one error line.
# Usage: tokenize_test.sh <switchyard> <repository root>   (exit 77: no SentencePiece)
set -u
bin=$1; root=$2
command -v spm_train >/dev/null && "$bin" --version | grep -q "SentencePiece: yes" ||
  { echo "skip: no SentencePiece (Debian's sentencepiece, libsentencepiece-dev)"; exit 77; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0; passed=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok   $*"; passed=$((passed + 1)); }

corpus=$work/corpus.txt
if [ -f "$root/../shared/data/tinyshakespeare.txt" ]; then
  cp "$root/../shared/data/tinyshakespeare.txt" "$corpus"; what=tinyshakespeare
else
  cat "$root"/docs/*.md "$root"/README.md >"$corpus"; what="the repository's docs"
fi
spm_train --input="$corpus" --model_prefix="$work/spm" --vocab_size=1000 --model_type=bpe \
  --character_coverage=1.0 >"$work/spm_train.log" 2>&1 || { fail "spm_train: $(tail -n 2 "$work/spm_train.log")"; exit 1; }

"$bin" tokenize --input "$corpus" --tokenizer "$work/spm.model" --out "$work/c" --threads 2 >"$work/tok.out" 2>"$work/tok.err" ||
  fail "tokenize: $(cat "$work/tok.err")"
spm_encode --model="$work/spm.model" --output_format=id <"$corpus" >"$work/ids.txt"
if python3 - "$work/ids.txt" "$work/c" "$work/tok.out" <<'PY'
import json, struct, sys
ids = [[int(t) for t in line.split()] for line in open(sys.argv[1])]
docs = [d for d in ids if d]  # lines that encode to nothing are not documents
expected = sum(len(d) for d in docs) + len(docs)  # plus one end-of-document token each
report = json.loads(open(sys.argv[3]).read())
idx = open(sys.argv[2] + ".idx", "rb").read()
version, code, n_seq, n_docs = struct.unpack("<QBQQ", idx[9:34])
lengths = struct.unpack(f"<{n_seq}i", idx[34:34 + 4 * n_seq])
tokens = open(sys.argv[2] + ".bin", "rb").read()
first = list(struct.unpack(f"<{lengths[0]}H", tokens[: 2 * lengths[0]]))
assert code == 8 and n_seq == len(docs) and n_docs == len(docs) + 1, (code, n_seq, n_docs, len(docs))
assert report["tokens"] == expected == sum(lengths) == len(tokens) // 2, (report["tokens"], expected, sum(lengths))
assert first == docs[0] + [report["eod_id"]], (first[:10], docs[0][:10])
print(f"{len(docs)} documents, {expected} tokens")
PY
then ok "tokenize $what: token counts equal spm_encode's + 1 end-of-document per document; $(cat "$work/tok.out")"
else fail "tokenize counts against spm_encode"; fi

# JSONL: the same documents as text fields give the same dataset.
python3 - "$corpus" "$work/corpus.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1], encoding="utf-8", errors="surrogateescape"):
        line = line.rstrip("\n")
        if line:
            out.write(json.dumps({"id": 1, "text": line}, ensure_ascii=False) + "\n")
PY
"$bin" tokenize --input "$work/corpus.jsonl" --tokenizer "$work/spm.model" --out "$work/j" --quiet >/dev/null 2>"$work/j.err" &&
  cmp -s "$work/c.bin" "$work/j.bin" && cmp -s "$work/c.idx" "$work/j.idx" &&
  ok "JSONL input: the same .bin and .idx as the text" || fail "JSONL input: $(cat "$work/j.err")"

# It trains: the Megatron dataset, and the text through data.tokenizer.
train() {  # name, extra --set...
  local name=$1; shift
  : >"$work/empty.yaml"; "$bin" train --config "$work/empty.yaml" --set model.vocab_size=1000 --set model.d_model=32 --set model.n_layers=2 \
    --set model.n_heads=2 --set model.seq_len=64 --set model.moe.num_experts=4 --set model.moe.ffn_hidden=32 \
    --set train.steps=30 --set train.global_batch=8 --set train.micro_batch=8 --set train.lr=0.01 \
    --set train.warmup_steps=3 --set train.log_every=30 --set train.eval_every=30 --set train.checkpoint_every=0 \
    --run-dir "$work/run_$name" "$@" >"$work/$name.log" 2>&1 || { fail "$name: $(grep -m1 error "$work/$name.log")"; return; }
  local val; val=$(grep -o '"val_loss":[0-9.]*' "$work/run_$name/metrics.jsonl" | cut -d: -f2)
  python3 -c "import math, sys; sys.exit(not float(sys.argv[1]) < math.log(1000) - 0.5)" "$val" &&
    ok "$name trains: validation loss $val after 30 steps (uniform: $(python3 -c 'import math; print(round(math.log(1000), 2))'))" ||
    fail "$name: validation loss $val"
}
train megatron --set data.source=megatron --set data.path="$work/c"
train text_tokenizer --set data.source=text --set data.path="$corpus" --set data.tokenizer="$work/spm.model"

# Bad input: one error line naming the file (and line), exit 2, nothing published.
printf '{"text": "fine"}\nnot json\n' >"$work/bad.jsonl"
"$bin" tokenize --input "$work/bad.jsonl" --tokenizer "$work/spm.model" --out "$work/bad" --quiet 2>"$work/bad.err"; status=$?
[ "$status" -eq 2 ] && [ "$(wc -l <"$work/bad.err")" -eq 1 ] && grep -q "^error: .*bad.jsonl:2: not a JSON object with a string 'text'" "$work/bad.err" &&
  [ ! -e "$work/bad.bin" ] && [ ! -e "$work/bad.idx" ] && ok "a bad JSONL line: $(cat "$work/bad.err")" || fail "bad JSONL: $status $(cat "$work/bad.err")"
head -c 3000 /dev/zero | tr '\0' 'a' >"$work/long.txt"
"$bin" tokenize --input "$work/long.txt" --tokenizer "$work/spm.model" --out "$work/long" --max-document-bytes 1000 --quiet 2>"$work/long.err"; status=$?
[ "$status" -eq 2 ] && grep -q "^error: .*long.txt:1: a document of 3000 bytes exceeds the limit of 1000" "$work/long.err" &&
  ok "a document over the limit: $(cat "$work/long.err")" || fail "long document: $status $(cat "$work/long.err")"
"$bin" tokenize --input "$work/missing.txt" --tokenizer "$work/spm.model" --out "$work/m" --quiet 2>"$work/m.err"; status=$?
[ "$status" -eq 2 ] && grep -q "^error: .*missing.txt: cannot read" "$work/m.err" && ok "a missing input: $(cat "$work/m.err")" ||
  fail "missing input: $status $(cat "$work/m.err")"
"$bin" tokenize --input "$corpus" --tokenizer "$corpus" --out "$work/m" --quiet 2>"$work/t.err"; status=$?
[ "$status" -eq 2 ] && grep -q "^error: .*corpus.txt: not a SentencePiece model" "$work/t.err" && ok "not a model: $(cat "$work/t.err")" ||
  fail "not a model: $status $(cat "$work/t.err")"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
