#!/usr/bin/env bash
# Fine-tuning table of docs/training.md: the shared ResNet20 fine-tuned with drop-connect p=0.2,
# BN re-aligned at 0/0.1/0.2/0.3, evaluated with the reference SA1 faults (10 chips per faulty
# rate, full test split), beside the pretrained model with and without BN re-alignment.
# Usage: benchmarks/finetune_table.sh [OUT=out/finetune] [EPOCHS=3]
# About 1.5 h on 2 busy CPU cores (training ~5 min/epoch, each 10k-image evaluation ~30 s);
# the pretrained-model chain and the fine-tuned chain run side by side, one thread each.
set -euo pipefail
OUT=${1:-out/finetune}
EPOCHS=${2:-3}
DATA=${RRAM_DATA:-../shared/data/cifar10-jpeg}
export RRAM_WEIGHTS=${RRAM_WEIGHTS:-../shared/models}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one thread each: no oversubscription on a busy box
RRAM="${PYTHON:-python} -m toolchain"
RATES=0,0.1,0.2,0.3
mkdir -p "$OUT/results"

evaluate() {  # evaluate CONFIG ROW [--bn-rate]: one JSON per SA1 rate
  local cfg=$1 row=$2 realign=$3 rate runs
  for rate in 0 0.1 0.2 0.3; do
    runs=10; [ "$rate" = 0 ] && runs=1   # no faults: every chip is the same
    $RRAM eval "$OUT/$cfg/recalibrated.pt" --data "$DATA" --sa1 $rate --runs $runs \
        --seed 0 --json $( [ "$realign" = yes ] && echo --bn-rate $rate ) \
        > "$OUT/results/$row-sa1-$rate.json.part"
    mv "$OUT/results/$row-sa1-$rate.json.part" "$OUT/results/$row-sa1-$rate.json"
  done
}

(  # pretrained model: its own BN statistics, and BN re-aligned at p' = SA1 rate
  $RRAM recalibrate resnet20-akamaster --bn-rate $RATES --batches 100 --data "$DATA" --out "$OUT/base"
  evaluate base base-train-stats no
  evaluate base base-realigned yes
) &
base=$!
(  # fine-tuned with drop-connect p=0.2, BN re-aligned at p' = SA1 rate
  $RRAM train resnet20-akamaster --model resnet20 --drop-rate 0.2 --epochs "$EPOCHS" \
      --lr 0.01 --data "$DATA" --out "$OUT/dc0.2" $( [ -f "$OUT/dc0.2/last.pt" ] && echo --resume )
  $RRAM recalibrate "$OUT/dc0.2/model.pt" --bn-rate $RATES --batches 100 --data "$DATA" --out "$OUT/dc0.2"
  evaluate dc0.2 dc0.2-realigned yes
) &
dc=$!
wait $base
wait $dc
${PYTHON:-python} benchmarks/finetune_table.py "$OUT/results"
