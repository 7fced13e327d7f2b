#!/usr/bin/env bash
# Prints how long the dashboard's pool page takes to render 200 accounts in Chromium: the
# browser test (tests/e2e/tests/dashboard.rs) prepares the same stack, then loads the pool page
# LOADS times (default 7) and prints the median, min and max from navigation start to the
# page's data-ready, on a line starting with "BENCH". Nothing is asserted about the times.
#   scripts/bench-dashboard.sh [LOADS]
set -euo pipefail
cd "$(dirname "$0")/.."
loads="${1:-7}"
bash scripts/setup.sh --test
bash scripts/build.sh
CODEXMESH_DASHBOARD_BENCH="$loads" cargo test --locked -p codexmesh-e2e --test dashboard -- \
  --exact the_dashboard_in_a_real_browser --nocapture 2>&1 | tee /dev/stderr | grep '^\[browser\] BENCH' || {
  echo "bench-dashboard: no BENCH line (the run failed; see above)" >&2
  exit 1
}
