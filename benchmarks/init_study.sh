#!/usr/bin/env bash
# Init[1] (B = 0) against Init[2] (A = 0) for LoRA+ (ratio 16) on MiniLM / Rotten Tomatoes, the
# demo's settings, two seeds each. Prints each sweep's best; results in runs/init/<scheme>/sweep.json.
set -euo pipefail
LR_A=${LR_A:-4e-4}
for scheme in init1 init2; do
  loraplus sweep --lr-a "$LR_A" --ratios 16 --seeds 0 1 --init "$scheme" \
    --model minilm --data rotten-tomatoes --max-steps 150 --eval-steps 25 --max-train 4000 \
    --max-eval 400 --batch-size 16 --max-length 64 --rank 8 --alpha 16 \
    --no-save-adapter --report-to none --no-progress \
    --study-name "init-$scheme" --out-dir "runs/init/$scheme"
done
