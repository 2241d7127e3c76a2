#!/usr/bin/env bash
# Is LoRA+'s gap on 20newsgroups the classifier head's lr? The head trained at lr_A under LoRA+
# (its default before the role "head" took ratio * lr) but at the much larger tuned lr under LoRA. Re-run LoRA+ (ratio 16) with the head
# at ratio * lr_A (--lr-multipliers head=16), the paper study's MiniLM settings, seed 0; then the
# same on rotten-tomatoes at the demo's LoRA+ lr; then 20newsgroups at lr_A 4e-4 with seeds 1 and 2
# (the seeds of the paper study). Results in runs/head/<study>/, copied to docs/study/head/.
set -euo pipefail
loraplus sweep --lr-a 1e-4 4e-4 --ratios 16 --seeds 0 --lr-multipliers head=16 \
  --model minilm --data 20newsgroups --max-steps 150 --eval-steps 25 --max-train 4000 \
  --max-eval 400 --batch-size 16 --max-length 64 --rank 8 --alpha 16 \
  --no-save-adapter --report-to none --no-progress \
  --study-name head-other16 --out-dir runs/head/20newsgroups
loraplus sweep --lr-a 4e-4 --ratios 16 --seeds 0 --lr-multipliers head=16 \
  --model minilm --data rotten-tomatoes --max-steps 150 --eval-steps 25 --max-train 4000 \
  --max-eval 400 --batch-size 16 --max-length 64 --rank 8 --alpha 16 \
  --no-save-adapter --report-to none --no-progress \
  --study-name head-other16-rotten --out-dir runs/head/rotten-tomatoes
loraplus sweep --lr-a 4e-4 --ratios 16 --seeds 1 2 --lr-multipliers head=16 \
  --model minilm --data 20newsgroups --max-steps 150 --eval-steps 25 --max-train 4000 \
  --max-eval 400 --batch-size 16 --max-length 64 --rank 8 --alpha 16 \
  --no-save-adapter --report-to none --no-progress \
  --study-name head-other16-seeds --out-dir runs/head/20newsgroups-seeds
mkdir -p docs/study/head
for d in runs/head/*/; do cp "$d/sweep.json" "docs/study/head/$(basename "$d").json"; done
