#!/usr/bin/env bash
# Issue #4's longer run on made shards, end to end on a CPU (README, "Recipe log"):
# a mini teacher trained from scratch (phase 2), a mini student distilled from it (phase 1),
# then fine-tuned twice (phase 2) with and without iterative correction clicks; every model
# scored by `effvit-sam eval` on a held-out made set. One thread, so a second core stays free.
#   bash distill/made_shards_run.sh            # everything (about an hour on one core)
#   FROM=cache bash distill/made_shards_run.sh # start at a stage: data teacher teacher_eval
#                                              # cache student noclicks clicks
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
R=runs/mini
CLI=${CLI:-effvit-sam}
FROM=${FROM:-data}
EVAL=(--dataset coco --annotations $R/heldout_coco/annotations/instances_val.json
      --images $R/heldout_coco/images --model mini --device cpu)
MSE=(--shards $R/heldout_shards/sa_000000.tar --student-model mini --teacher-kind efficientvit
     --teacher-name mini --teacher $R/teacher/pretrained)
mkdir -p $R/eval
timed() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0)) s" | tee -a $R/eval/wall_times.txt; }
score() {  # box and 1/3-click mIoU of $R/$1/pretrained on the held-out set
    timed "eval_box_$1" $CLI eval box "${EVAL[@]}" --checkpoint $R/$1/pretrained/model.safetensors \
        --output $R/eval/$1_box.json
    timed "eval_point_$1" $CLI eval point "${EVAL[@]}" --checkpoint $R/$1/pretrained/model.safetensors \
        --num-clicks 3 --output $R/eval/$1_point.json
}
score_fed() {  # clicks with the previous round's logits fed back, as iterative training does
    timed "eval_point_feed_$1" $CLI eval point "${EVAL[@]}" --num-clicks 3 --feed-logits \
        --checkpoint $R/$1/pretrained/model.safetensors --output $R/eval/$1_point_feed.json
}
stages=(data teacher teacher_eval cache student noclicks clicks)
run=0
for stage in "${stages[@]}"; do
    [[ $stage == "$FROM" ]] && run=1
    [[ $run == 1 ]] || continue
    case $stage in
    data)  # training shards (seed 0), held-out shards and COCO-format eval set (seed 1)
        $CLI make-shards --out $R/shards --num-shards 8 --images-per-shard 50 --seed 0 --image-size 256
        $CLI make-shards --out $R/heldout_shards --num-shards 1 --images-per-shard 40 --seed 1 --image-size 256
        $CLI make-eval-set --out $R/heldout_coco --num-images 40 --seed 1 --image-size 256 --format coco ;;
    teacher)
        timed teacher_phase2 $CLI finetune --config mini_teacher ;;
    teacher_eval)
        score teacher ;;
    cache)
        timed cache_teacher $CLI cache-teacher --shards "$R/shards/sa_{000000..000007}.tar" \
            --out $R/cache --kind efficientvit --name mini --checkpoint $R/teacher/pretrained --device cpu
        $CLI embed-mse "${MSE[@]}" --student-random-init --seed 1 --output $R/eval/embed_mse_before.json ;;
    student)
        timed student_phase1 $CLI distill --config mini_student_phase1
        $CLI embed-mse "${MSE[@]}" --student $R/student_p1/pretrained --output $R/eval/embed_mse_after.json
        score student_p1 ;;
    noclicks)
        timed student_phase2_noclicks $CLI finetune --config mini_student_phase2_noclicks
        score student_p2_noclicks; score_fed student_p2_noclicks ;;
    clicks)
        timed student_phase2_clicks $CLI finetune --config mini_student_phase2
        score student_p2_clicks; score_fed student_p2_clicks ;;
    esac
done
