#!/usr/bin/env bash
# Measures every row of README.md's results, at full size, and writes them as JSON into
# OUT (default: fashion-mnist-results). Needs FEDSILO_DATA; takes about an hour on 2 cores.
#   examples/fashion-mnist/results.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-fashion-mnist-results}
here=examples/fashion-mnist
mkdir -p "$out"

run_split() {  # run_split NAME FEDERATION FEDAVG_JOB [prepare options...]
  local name=$1 federation=$2 fedavg=$3
  shift 3
  local ws="$out/ws-$name"
  rm -rf "$ws"
  fedsilo provision "$federation" --out "$ws" > /dev/null
  fedsilo example fashion-mnist prepare "$ws" --json "$@" > "$out/$name-split.json"
  fedsilo baseline "$fedavg" -w "$ws" --json > "$out/$name-baseline.json"
}

run_split iid "$here/federation.yaml" "$here/fedavg.yaml" --scheme iid
run_split dirichlet "$here/federation.yaml" "$here/fedavg.yaml" --scheme dirichlet --alpha 0.5
for name in iid dirichlet; do
  for strategy in fedprox fedadam; do
    fedsilo sim "$here/$strategy.yaml" -w "$out/ws-$name" --json > "$out/$name-$strategy.json"
  done
done
# The FedAvg job through the real processes: wall-clock with every silo training at once.
fedsilo up "$out/ws-iid" > /dev/null
fedsilo submit "$here/fedavg.yaml" -w "$out/ws-iid" --wait --json > "$out/iid-federation.json" \
  || true
fedsilo down "$out/ws-iid" > /dev/null
run_split dirichlet-10 "$here/federation-10.yaml" "$here/fedavg-10.yaml" --scheme dirichlet --alpha 0.5
