#!/usr/bin/env bash
# Measures every row of README.md's results, at full size, and writes them as JSON into
# OUT (default: pneumonia-results). Needs FEDSILO_DATA and fedsilo on PATH.
#   examples/pneumonia/results.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-pneumonia-results}
here=examples/pneumonia
ws="$out/ws"
mkdir -p "$out"
rm -rf "$ws"
fedsilo provision "$here/federation.yaml" --out "$ws" > /dev/null
fedsilo example pneumonia prepare "$ws" --json > "$out/split.json"
fedsilo baseline "$here/job.yaml" -w "$ws" --seeds 3 --json > "$out/baseline.json"
fedsilo baseline "$here/job-dp.yaml" -w "$ws" --json > "$out/baseline-dp.json"
# Both jobs through the real processes: wall-clock with the hospitals training at once,
# and the epsilon each hospital reports.
fedsilo up "$ws" > /dev/null
fedsilo submit "$here/job.yaml" -w "$ws" --wait --json > "$out/federation.json" || true
fedsilo submit "$here/job-dp.yaml" -w "$ws" --wait --json > "$out/federation-dp.json" || true
fedsilo down "$ws" > /dev/null
