#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that reads outside input (issue 16), with libFuzzer
# through cargo-fuzz, on the stable toolchain (no sanitizer: `--sanitizer none`; Rust's own
# bounds and overflow checks, debug assertions on, still turn a bug into a crash).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Each target runs for the budget, starting from its corpus (fuzz/corpus/<target>, kept between
# runs, not checked in), the checked-in seeds (fuzz/seeds/<target>) and the regression inputs
# (fuzz/regressions/<target>, replayed by the test suite too). At the end a table: executions,
# coverage (libFuzzer's edge count `cov` and feature count `ft`), corpus size, crashes. A crash
# leaves its input in fuzz/artifacts/<target>/; copy it into fuzz/regressions/<target>/ so the
# suite replays it, fix, rerun. Exit status: 1 when any target crashed.
#
# Not run in CI (it takes as long as it is given). FUZZ_SANITIZER=address uses ASan instead
# (needs a nightly toolchain: `cargo +nightly`); FUZZ_JOBS=N runs N workers per target.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz from crates.io" >&2
  cargo install --locked cargo-fuzz
fi

# The fuzz crate builds into its own target directory (instrumented builds never mix with the
# workspace's); CARGO_TARGET_DIR, when set, is used as its parent.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}/fuzz"
sanitizer=${FUZZ_SANITIZER:-none}
jobs=${FUZZ_JOBS:-1}

cd fuzz
if [ $# -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
else
  targets=("$@")
fi

echo "building ${#targets[@]} targets (sanitizer: $sanitizer)" >&2
for t in "${targets[@]}"; do
  cargo fuzz build --sanitizer "$sanitizer" -O -a "$t" >/dev/null
done

mkdir -p logs
summary=()
crashed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  extra=()
  for d in "seeds/$t" "regressions/$t"; do
    [ -d "$d" ] && extra+=("$d")
  done
  before=$(find "artifacts/$t" -type f | wc -l)
  log="logs/$t.log"
  echo "fuzzing $t for ${seconds}s" >&2
  parallel=()
  [ "$jobs" -gt 1 ] && parallel=(-jobs="$jobs" -workers="$jobs")
  status=0
  cargo fuzz run --sanitizer "$sanitizer" -O -a "$t" "corpus/$t" "${extra[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 "${parallel[@]}" >"$log" 2>&1 || status=$?
  after=$(find "artifacts/$t" -type f | wc -l)
  execs=$( (grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" || true) | awk '{s+=$2} END {print s+0}')
  last=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(find "corpus/$t" -type f | wc -l)
  crashes=$((after - before))
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes="? (exit $status, see fuzz/$log)"
    crashed=1
  elif [ "$crashes" -ne 0 ]; then
    crashed=1
  fi
  summary+=("$(printf '%-18s %12s %7s %7s %7s  %s' "$t" "$execs" "${cov:--}" "${ft:--}" "$corp" "$crashes")")
done

echo
printf '%-18s %12s %7s %7s %7s  %s\n' target execs cov ft corpus crashes
printf '%s\n' "${summary[@]}"
if [ "$crashed" -ne 0 ]; then
  echo
  echo "crash inputs are in fuzz/artifacts/<target>/ (logs in fuzz/logs/): copy each into"
  echo "fuzz/regressions/<target>/, fix, and rerun"
  exit 1
fi
