#!/usr/bin/env bash
# `switchyard config check` on many kinds of bad input: each must exit 2 with exactly one stderr line
# that starts with "error: " and names the key or file at fault, never a signal or an abort trace.
# Usage: bad_configs_test.sh <switchyard binary> <dir of this script>
set -u
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

write() { printf '%s\n' "$2" >"$tmp/$1"; }
write typo.yaml       $'model:\n  moe:\n    num_expert: 8'
write type.yaml       $'train:\n  steps: many'
write range.yaml      $'model:\n  moe:\n    top_k: 0'
write malformed.yaml  $'model:\n  d_model: [64,\n'
write cross.yaml      $'model:\n  moe:\n    num_experts: 4\n    top_k: 6'
write enum.yaml       $'model:\n  moe:\n    router:\n      kind: softmax'
write notmap.yaml     $'model: 12'
write section.yaml    $'modle:\n  d_model: 64'
write tabs.yaml       $'model:\n\td_model: 64'
write good.yaml       $'model:\n  d_model: 64'
write mapkey.yaml     $'model:\n  d_model: 64\n  {expert_parallel: 2}: 1'
# Hostile input (issue 23): an alias bomb (9^9 nodes if expanded), 100k levels of nesting, a 4 MB string.
{ echo 'a: &a ["x","x","x","x","x","x","x","x","x"]'
  prev=a; for n in b c d e f g h i; do echo "$n: &$n [*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev,*$prev]"; prev=$n; done
  echo 'model: {d_model: *i}'; } >"$tmp/bomb.yaml"
{ printf 'model:\n  d_model: '; head -c 100000 /dev/zero | tr '\0' '['; head -c 100000 /dev/zero | tr '\0' ']'; echo; } >"$tmp/deep.yaml"
{ printf 'train:\n  run_dir: "'; head -c 4000000 /dev/zero | tr '\0' 'a'; printf '"\n  steps: x\n'; } >"$tmp/long.yaml"

# name | expected substring | arguments after "config check"
cases=(
  "typo'd key|model.moe.num_expert: unknown key (did you mean 'model.moe.num_experts'?)|--config $tmp/typo.yaml"
  "wrong type|train.steps: expected an integer, got 'many'|--config $tmp/type.yaml"
  "out of range|model.moe.top_k: must be in [1, 64], got 0|--config $tmp/range.yaml"
  "missing file|$tmp/absent.yaml: cannot open config file|--config $tmp/absent.yaml"
  "malformed YAML|$tmp/malformed.yaml:|--config $tmp/malformed.yaml"
  "cross-field|model.moe.top_k: must be <= model.moe.num_experts (4), got 6|--config $tmp/cross.yaml"
  "bad enum|model.moe.router.kind: expected one of|--config $tmp/enum.yaml"
  "section not a mapping|model: expected a mapping|--config $tmp/notmap.yaml"
  "typo'd section|modle: unknown key (did you mean 'model'?)|--config $tmp/section.yaml"
  "tab indentation|$tmp/tabs.yaml:|--config $tmp/tabs.yaml"
  "bad --set syntax|--set 'train.steps': expected key.path=value|--config $tmp/good.yaml --set train.steps"
  "bad --set key|train.stpes: unknown key (did you mean 'train.steps'?)|--config $tmp/good.yaml --set train.stpes=3"
  "bad --set value|train.lr: must be in (0, 10], got -1|--config $tmp/good.yaml --set train.lr=-1"
  "no --config|--config is required|"
  "a map as a key|model: a key that is not a name|--config $tmp/mapkey.yaml"
  "alias bomb|model.d_model: expected an integer, got a list|--config $tmp/bomb.yaml"
  "deep nesting|$tmp/deep.yaml:|--config $tmp/deep.yaml"
  "4 MB string|train.steps: expected an integer|--config $tmp/long.yaml"
  "experts 1e9|model.moe.num_experts: must be in [1, 4096], got 1000000000|--config $tmp/good.yaml --set model.moe.num_experts=1000000000"
  "seq_len 1e12|model.seq_len: must be in [2, 1048576], got 1000000000000|--config $tmp/good.yaml --set model.seq_len=1000000000000"
  "NaN|train.lr: expected a number, got 'nan'|--config $tmp/good.yaml --set train.lr=nan"
  "inf|model.moe.capacity_factor: expected a number, got 'inf'|--config $tmp/good.yaml --set model.moe.capacity_factor=inf"
)

for c in "${cases[@]}"; do
  IFS='|' read -r name expected args <<<"$c"
  start=$SECONDS
  # shellcheck disable=SC2086
  timeout 30 "$bin" config check $args >"$tmp/out" 2>"$tmp/err"
  status=$?
  [ $((SECONDS - start)) -le 10 ] || { echo "FAIL [$name]: took $((SECONDS - start)) s"; failures=$((failures + 1)); }
  lines=$(wc -l <"$tmp/err")
  first=$(head -n 1 "$tmp/err")
  if [ "$status" -ne 2 ]; then
    echo "FAIL [$name]: exit status $status, expected 2"; failures=$((failures + 1))
  elif [ "$lines" -ne 1 ]; then
    echo "FAIL [$name]: $lines stderr lines, expected 1:"; cat "$tmp/err"; failures=$((failures + 1))
  elif [[ "$first" != error:* ]]; then
    echo "FAIL [$name]: stderr does not start with 'error: ': $first"; failures=$((failures + 1))
  elif [[ "$first" != *"$expected"* ]]; then
    echo "FAIL [$name]: '$first' does not contain '$expected'"; failures=$((failures + 1))
  else
    echo "ok   [$name]: $first"
  fi
done

# The good config passes and prints the resolved config, which loads back.
if ! "$bin" config check --config "$tmp/good.yaml" >"$tmp/resolved.yaml" 2>"$tmp/err"; then
  echo "FAIL [good config]: $(cat "$tmp/err")"; failures=$((failures + 1))
elif ! "$bin" config check --config "$tmp/resolved.yaml" >"$tmp/resolved2.yaml" 2>"$tmp/err" ||
     ! cmp -s "$tmp/resolved.yaml" "$tmp/resolved2.yaml"; then
  echo "FAIL [round trip]: resolved config does not load back to itself"; failures=$((failures + 1))
else
  echo "ok   [good config round trip]"
fi

# Sizes each inside their bounds whose product cannot fit: refused before allocating, naming the keys.
timeout 60 "$bin" train --config "$tmp/good.yaml" --set model.vocab_size=1073741824 --set model.d_model=65536 \
  --set model.n_heads=16 --run-dir "$tmp/huge" >"$tmp/out" 2>"$tmp/err"; status=$?
if [ "$status" -ne 2 ] || ! grep -q "^error: .*model.vocab_size x model.d_model" "$tmp/err"; then
  echo "FAIL [model too big for memory]: status $status: $(tail -n 2 "$tmp/err")"; failures=$((failures + 1))
else
  echo "ok   [model too big for memory]: $(head -c 160 "$tmp/err")"
fi

# Unknown subcommands are usage errors.
"$bin" frobnicate >"$tmp/out" 2>"$tmp/err"; status=$?
if [ "$status" -ne 2 ] || [[ "$(head -n1 "$tmp/err")" != error:* ]]; then
  echo "FAIL [unknown subcommand]: status $status: $(cat "$tmp/err")"; failures=$((failures + 1))
else
  echo "ok   [unknown subcommand]"
fi

total=$(( ${#cases[@]} + 3 ))
echo "$((total - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
