#!/usr/bin/env bash
# run.sh BUILD - run every test binary under BUILD/tests and print one summary.
# Each binary is a Check suite (CK_FORK, so one crashing test does not take the
# others down). Integration tests start their own nats-server and etcd.
# Env: TESTS=glob to run a subset (e.g. TESTS='*etcd*').
set -u
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export SLUICE_BIN_DIR="$ROOT/$BUILD/bin"
export SLUICE_BENCH_DIR="$ROOT/$BUILD/bench"
export SLUICE_ROOT="$ROOT"
export SLUICE_SHARED="${SLUICE_SHARED:-$ROOT/../shared}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$ROOT/tests/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export CK_DEFAULT_TIMEOUT="${CK_DEFAULT_TIMEOUT:-120}"

pattern=${TESTS:-*}
total=0; failed=0; bins=0; bad_bins=()
for t in "$ROOT/$BUILD"/tests/unit/test_* "$ROOT/$BUILD"/tests/integration/test_*; do
  [ -x "$t" ] || continue
  case "$t" in *.d|*.o) continue;; esac
  case "$(basename "$t")" in $pattern) ;; *) continue;; esac
  bins=$((bins + 1))
  echo "=== $(basename "$(dirname "$t")")/$(basename "$t")"
  out=$(timeout 900 "$t" 2>&1); rc=$?
  echo "$out" | grep -E '^[0-9]+%: Checks:|:[EF]:|ERROR|SUMMARY|runtime error|skipped:' | head -40
  line=$(echo "$out" | grep -E '^[0-9]+%: Checks:' | tail -1)
  if [ -n "$line" ]; then
    n=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
    f=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
    e=$(echo "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
    total=$((total + n)); failed=$((failed + f + e))
  else
    failed=$((failed + 1)); total=$((total + 1))
    echo "$out" | tail -30
  fi
  if [ $rc -ne 0 ]; then bad_bins+=("$(basename "$t")"); fi
done
passed=$((total - failed))
echo
echo "test binaries: $bins, failing: ${#bad_bins[@]} ${bad_bins[*]:-}"
echo "${passed} passed, ${failed} failed"
[ $failed -eq 0 ] && [ ${#bad_bins[@]} -eq 0 ]
