#!/usr/bin/env bash
# Rebuilds the shipped models from simulator data: one model per simulated sensor kind,
# each trained on one simulated day of six sensors of that kind at 1 reading/s, with no
# injected anomalies. "default" is the vibration model (readings around 0.5-1.1 g), the
# one /predict uses without a sensor_id. Deterministic: same seeds, same forests. The features
# are named: a day of data has no day before it, so the default season:1d would be empty.
set -euo pipefail
features=value,delta,repeats,mean:30,std:10,drift:600
cd "$(dirname "$0")/.."
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
edge-sim --sensors 24 --rate 1 --seed 7 --duration 86400 --anomaly-rate 0 \
    --start 1735689600 --no-publish --csv "$data/sim.csv"
for kind in temperature humidity vibration current; do
    edge-agent train --input "$data/sim.csv" --columns value --sensors "$kind-*" \
        --features "$features" --out "models/$kind" --model-version "sim-2025.1" --seed 0 --no-record-command
done
edge-agent train --input "$data/sim.csv" --columns value --sensors "vibration-*" \
    --features "$features" --out models/default --name default --model-version "sim-2025.1" --seed 0 --no-record-command
