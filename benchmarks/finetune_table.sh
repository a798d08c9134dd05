#!/usr/bin/env bash
# Fine-tuning table of docs/training.md: the shared ResNet20 fine-tuned with drop-connect p=0.2,
# BN re-aligned at 0/0.1/0.2/0.3, evaluated with the reference SA1 faults (10 chips per rate, full
# test split), beside the pretrained model with and without BN re-alignment.
# Usage: benchmarks/finetune_table.sh [OUT=out/finetune] [EPOCHS=3]   (about an hour on 2 CPU cores)
set -euo pipefail
OUT=${1:-out/finetune}
EPOCHS=${2:-3}
DATA=${RRAM_DATA:-../shared/data/cifar10-jpeg}
export RRAM_WEIGHTS=${RRAM_WEIGHTS:-../shared/models}
RRAM="${PYTHON:-python} -m toolchain"
RATES=0,0.1,0.2,0.3
mkdir -p "$OUT/results"

$RRAM train --model resnet20 --init resnet20-akamaster --drop-rate 0.2 --epochs "$EPOCHS" \
    --lr 0.01 --data "$DATA" --out "$OUT/dc0.2" $( [ -f "$OUT/dc0.2/last.pt" ] && echo --resume )
$RRAM recalibrate resnet20-akamaster --rates $RATES --batches 100 --data "$DATA" --out "$OUT/base"
$RRAM recalibrate "$OUT/dc0.2/model.pt" --rates $RATES --batches 100 --data "$DATA" --out "$OUT/dc0.2"

for cfg in base dc0.2; do
  for rate in 0 0.1 0.2 0.3; do
    runs=10; [ "$rate" = 0 ] && runs=1   # no faults: every chip is the same
    ck="$OUT/$cfg/recalibrated.pt"
    $RRAM eval --checkpoint "$ck" --data "$DATA" --sa1 $rate --runs $runs --seed 0 --json \
        > "$OUT/results/$cfg-train-stats-sa1-$rate.json"
    $RRAM eval --checkpoint "$ck" --data "$DATA" --sa1 $rate --runs $runs --seed 0 --json \
        --rate-stats $rate > "$OUT/results/$cfg-realigned-sa1-$rate.json"
  done
done
${PYTHON:-python} benchmarks/finetune_table.py "$OUT/results"
