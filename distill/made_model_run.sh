#!/usr/bin/env bash
# Issue #13: the made-data model, end to end on a CPU, resumable at every stage. A teacher
# (efficientvit-sam-mini-teacher) trained from scratch on made shards, then the student
# (efficientvit-sam-mini, 1/4.9 of the teacher encoder's MACs) distilled from it exactly as
# from SAM ViT-H: cache-teacher, phase 1 (embeddings), phase 2 with and without iterative
# correction clicks. Every model is scored on a held-out made set (make-eval-set defaults,
# seed 7, which no training shard uses). Run from a checkout's root:
#   bash distill/made_model_run.sh                 # everything, or continue where it stopped
#   FROM=student bash distill/made_model_run.sh    # start at a stage: data teacher teacher_eval
#                                                  # cache student noclicks clicks
#   LIMIT=50 bash distill/made_model_run.sh        # quicker evals on the first 50 images
# Training stages pass --resume auto: a killed run continues from run.out_dir/checkpoint.pt
# (exactly: same batches, prompts and RNG draws), a finished one is trained again only if its
# pretrained/ folder is missing. THREADS (default 2) sets the intra-op threads.
set -euo pipefail
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
R=runs/made
PY=${PY:-python}
FROM=${FROM:-data}
EVAL=(--dataset coco --annotations $R/heldout_coco/annotations/instances_val.json
      --images $R/heldout_coco/images --device cpu ${LIMIT:+--limit $LIMIT})
TEACHER=(--teacher-kind efficientvit --teacher-name efficientvit-sam-mini-teacher
         --teacher $R/teacher/pretrained)
MSE=(--shards $R/heldout_shards/sa_000000.tar --student-model efficientvit-sam-mini "${TEACHER[@]}")
mkdir -p $R/eval
timed() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0)) s" | tee -a $R/eval/wall_times.txt; }
train() {  # train CLI CONFIG: skipped when the run's pretrained/ exists
    local out; out=$($PY -c "from distill.config import load_config; print(load_config('$2').run.out_dir)")
    [[ -f $out/pretrained/model.safetensors ]] && { echo "$2: $out/pretrained exists"; return; }
    timed "$2" $PY -m distill "$1" --config "$2" --resume auto
}
score() {  # score MODEL RUN: box, 1/3-click (unfed) and 3-click fed mIoU of $R/RUN/pretrained
    local ck=$R/$2/pretrained/model.safetensors
    timed "eval_box_$2" $PY -m eval box "${EVAL[@]}" --model "$1" --checkpoint $ck --output $R/eval/$2_box.json
    timed "eval_point_$2" $PY -m eval point "${EVAL[@]}" --model "$1" --checkpoint $ck --num-clicks 3 \
        --output $R/eval/$2_point.json
    timed "eval_point_feed_$2" $PY -m eval point "${EVAL[@]}" --model "$1" --checkpoint $ck \
        --num-clicks 3 --feed-logits --output $R/eval/$2_point_feed.json
}
stages=(data teacher teacher_eval cache student noclicks clicks)
run=0
for stage in "${stages[@]}"; do
    [[ $stage == "$FROM" ]] && run=1
    [[ $run == 1 ]] || continue
    case $stage in
    data)  # training shards (seeds 0 and 2), held-out shards and eval set (seed 7, defaults)
        for s in a:0 b:2; do
            [[ -f $R/shards_${s%:*}/sa_000029.tar ]] || $PY -m effvit_sam make-shards \
                --out $R/shards_${s%:*} --num-shards 30 --images-per-shard 50 --seed ${s#*:} --image-size 512
        done
        [[ -f $R/heldout_shards/sa_000000.tar ]] || $PY -m effvit_sam make-shards \
            --out $R/heldout_shards --num-shards 1 --images-per-shard 50 --seed 7 --image-size 512
        [[ -f $R/heldout_coco/annotations/instances_val.json ]] || $PY -m effvit_sam make-eval-set \
            --out $R/heldout_coco --num-images 200 --seed 7 --format coco ;;
    teacher)
        train finetune made_teacher ;;
    teacher_eval)
        score efficientvit-sam-mini-teacher teacher ;;
    cache)
        for s in a b; do
            [[ -f $R/cache_$s/sa_000029.tar ]] || timed cache_teacher_$s $PY -m distill cache-teacher \
                --shards "$R/shards_$s/sa_{000000..000029}.tar" --out $R/cache_$s --kind efficientvit \
                --name efficientvit-sam-mini-teacher --checkpoint $R/teacher/pretrained --device cpu
        done
        $PY -m distill embed-mse "${MSE[@]}" --student-random-init --seed 1 \
            --output $R/eval/embed_mse_before.json ;;
    student)
        train distill made_student_phase1
        $PY -m distill embed-mse "${MSE[@]}" --student $R/student_p1/pretrained \
            --output $R/eval/embed_mse_after.json
        score efficientvit-sam-mini student_p1 ;;
    noclicks)
        train finetune made_student_phase2_noclicks
        score efficientvit-sam-mini student_p2_noclicks ;;
    clicks)
        train finetune made_student_phase2
        score efficientvit-sam-mini student_p2_clicks ;;
    esac
done
