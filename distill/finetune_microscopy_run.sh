#!/usr/bin/env bash
# Issue #15's worked example (README, "Fine-tune on your data"): a made microscopy set, whose
# look differs from the made training scenes, converted with make-shards --from-masks, the
# bundled model (efficientvit-sam-mini, trained on made scenes) fine-tuned on it decoder-only
# with the finetune_custom recipe, scored by `effvit-sam eval` on the held-out 20% before and
# after, and a before/after picture of one click per cell. One thread.
#   CLI="python -m effvit_sam" bash distill/finetune_microscopy_run.sh
# START: the starting weights (file or save_pretrained folder; default the bundled model) and
# MODEL their architecture. CLI: the command to run (python -m effvit_sam from a checkout).
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=${R:-runs/micro}
CLI=${CLI:-effvit-sam}
MODEL=${MODEL:-efficientvit-sam-mini}
START=${START:-effvit_sam/bundled/efficientvit-sam-mini}
STEPS=${STEPS:-60}
mkdir -p $R/eval
timed() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0)) s" | tee -a $R/eval/wall_times.txt; }
EVAL=(--dataset coco --annotations $R/shards/val/instances_val.json --images $R/folder/images
      --model $MODEL --device cpu)
score() {  # box and 1/3/5-click mIoU of the weights $2, as $1
    timed "eval_box_$1" $CLI eval box "${EVAL[@]}" --checkpoint "$2" --output $R/eval/$1_box.json
    timed "eval_point_$1" $CLI eval point "${EVAL[@]}" --checkpoint "$2" --num-clicks ${CLICKS:-5} \
        --output $R/eval/$1_point.json
}
if [ ! -d $R/shards ]; then
    timed make_microscopy $CLI make-microscopy --out $R/folder --num-images 100 \
        --image-size 256 --seed 0
    timed make_shards $CLI make-shards --from-masks $R/folder --out $R/shards \
        --images-per-shard 20 --val-fraction 0.2
fi
[ -f $R/eval/before_point.json ] || score before "$START"
timed finetune $CLI finetune --config finetune_custom --overwrite --set \
    model.name=$MODEL model.init="$START" "data.shards=$R/shards/sa_{000000..000004}.tar" \
    data.max_masks=8 train.steps=$STEPS train.lr=1e-3 train.warmup_steps=5 \
    train.focal_weight=1.0 train.dice_weight=1.0 prompts.iterative_rounds=0 \
    eval.annotations=$R/shards/val/instances_val.json eval.images=$R/folder/images \
    eval.every=20 eval.at_start=false run.save_every=20 run.log_every=10 run.out_dir=$R/finetune
score after $R/finetune/pretrained_best/model.safetensors
python -m distill.finetune_example_figure --annotations $R/shards/val/instances_val.json \
    --images $R/folder/images --model $MODEL --before "$START" \
    --after $R/finetune/pretrained_best --out $R/eval/before_after.jpg
