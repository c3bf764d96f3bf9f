#!/usr/bin/env bash
# Measures every row of README.md's results, at full size, and writes them as JSON into
# OUT (default: ccfraud-results). Needs FEDSILO_DATA; takes about 5 minutes on 2 cores.
#   examples/ccfraud/results.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-ccfraud-results}
here=examples/ccfraud
ws="$out/ws"
mkdir -p "$out"
rm -rf "$ws"
fedsilo provision "$here/federation.yaml" --out "$ws" > /dev/null
fedsilo example ccfraud prepare "$ws" --json > "$out/split.json"
for model in dense lstm autoencoder; do
  fedsilo baseline "$here/$model.yaml" -w "$ws" --json > "$out/$model-baseline.json"
done
# The autoencoder's figures move more between runs: the same comparison over three seeds.
fedsilo baseline "$here/autoencoder.yaml" -w "$ws" --seeds 3 --json > "$out/autoencoder-seeds.json"
