#!/usr/bin/env bash
# Measures every row of README.md's results, at full size, and writes them as JSON into
# OUT (default: ner-results). Needs FEDSILO_DATA; takes about 50 minutes on 2 cores.
#   examples/ner/results.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-ner-results}
here=examples/ner
ws="$out/ws"
mkdir -p "$out"
rm -rf "$ws"
fedsilo provision "$here/federation.yaml" --out "$ws" > /dev/null
fedsilo example ner prepare "$ws" --json > "$out/split.json"
fedsilo baseline "$here/job.yaml" -w "$ws" --json > "$out/baseline.json"
# The same comparison over three seeds: one run on 480 test tweets is one draw.
fedsilo baseline "$here/job.yaml" -w "$ws" --seeds 3 --json > "$out/baseline-seeds.json"
# The DP-SGD job, simulated once per epsilon: F1 against the privacy budget.
fedsilo sim "$here/job-dp.yaml" -w "$ws" --json \
  --sweep privacy.local.target_epsilon=8,20,64,1000 --metric f1 --plot "$out/dp-sweep.png" \
  > "$out/dp-sweep.json"
