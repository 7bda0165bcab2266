#!/usr/bin/env bash
# A failing, stuck or stopped rank ends every rank with a non-zero status, promptly.
# Usage: fault_injection_test.sh <mpiexec> <fault_injection binary> <mpiexec flags...>
set -u
mpiexec=$1; bin=$2; shift 2; flags=("$@")
failures=0
out=$(mktemp); err=$(mktemp); trap 'rm -f "$out" "$err"' EXIT
check() {  # mode, expected stderr text (empty: any), most seconds the job may take
  local start end status secs
  start=$(date +%s.%N)
  timeout 90 "$mpiexec" -n 2 "${flags[@]}" "$bin" "$1" >"$out" 2>"$err"
  status=$?
  end=$(date +%s.%N)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then
    echo "FAIL [$1]: exit status $status (0 = not detected, 124 = hang)"; failures=$((failures + 1))
  elif [ -n "$2" ] && ! grep -q "$2" "$err"; then
    echo "FAIL [$1]: stderr lacks '$2':"; cat "$err"; failures=$((failures + 1))
  elif grep -q "Process received signal\|Aborted (core dumped)\|terminate called" "$err"; then
    echo "FAIL [$1]: crash trace:"; cat "$err"; failures=$((failures + 1))
  elif awk -v s="$secs" -v m="$3" 'BEGIN { exit !(s > m) }'; then
    echo "FAIL [$1]: the job took $secs s (at most $3)"; failures=$((failures + 1))
  else
    echo "ok   [$1]: status $status after $secs s: $(grep '^error:' "$err" | head -n1)"
  fi
}
check throw "^error: \[rank 1\] injected failure at step 3" 10
check hang "^error: \[rank 0\] all_reduce did not complete within parallel.timeout_s = 2 s" 15
check segv "^error: \[rank 1\] internal error: signal 11 (a bug in Switchyard" 10
check stop "^error: \[rank 0\] rank 1 sent no heartbeat for" 10
check exit "" 10
echo "$((5 - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
