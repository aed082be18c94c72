#!/usr/bin/env bash
# The first half of the pipeline on DangerousTaxi, step by step, timed: teacher data, reflection
# SFT, policy SFT, then the held-out evaluation of the two SFT players ("SFT only" row).
set -euo pipefail
cd "$(dirname "$0")/.."
REFLECTRL=${REFLECTRL:-reflectrl}
time $REFLECTRL generate --config configs/taxi_data.yaml --overwrite true
time $REFLECTRL fit --config configs/taxi_reflection_sft.yaml
time $REFLECTRL fit --config configs/taxi_policy_sft.yaml
time $REFLECTRL test --config configs/taxi_policy_sft.yaml --ckpt_path runs/taxi/policy_sft/checkpoints/last.ckpt
