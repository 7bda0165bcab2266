#!/usr/bin/env bash
# A failing or stuck rank ends every rank with a non-zero status within the bounded wait.
# Usage: fault_injection_test.sh <mpiexec> <fault_injection binary> <mpiexec flags...>
set -u
mpiexec=$1; bin=$2; shift 2; flags=("$@")
failures=0
check() {  # mode, expected stderr text
  local start end status
  start=$(date +%s)
  timeout 90 "$mpiexec" -n 2 "${flags[@]}" "$bin" "$1" >/tmp/fault.$$.out 2>/tmp/fault.$$.err
  status=$?
  end=$(date +%s)
  if [ "$status" -eq 0 ] || [ "$status" -eq 124 ]; then
    echo "FAIL [$1]: exit status $status (0 = not detected, 124 = hang)"; failures=$((failures + 1))
  elif ! grep -q "$2" /tmp/fault.$$.err; then
    echo "FAIL [$1]: stderr lacks '$2':"; cat /tmp/fault.$$.err; failures=$((failures + 1))
  elif grep -q "Process received signal\|Aborted (core dumped)\|terminate called" /tmp/fault.$$.err; then
    echo "FAIL [$1]: crash trace:"; cat /tmp/fault.$$.err; failures=$((failures + 1))
  else
    echo "ok   [$1]: status $status after $((end - start)) s: $(grep '^error:' /tmp/fault.$$.err | head -n1)"
  fi
}
check throw "^error: \[rank 1\] injected failure at step 3"
check hang "^error: \[rank 0\] all_reduce did not complete within parallel.timeout_s = 2 s"
check segv "^error: \[rank 1\] internal error: signal 11 (a bug in Switchyard"
rm -f /tmp/fault.$$.out /tmp/fault.$$.err
echo "$((3 - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
