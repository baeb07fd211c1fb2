#!/usr/bin/env bash
# Issue #13: the made-data model, end to end on a CPU, resumable at every stage. A teacher
# (efficientvit-sam-mini-teacher) trained from scratch on made shards, trained on at restarted
# schedules (made_teacher, made_teacher_more), taught correction clicks (made_teacher_ritm),
# then deepened twice (made_teacher_deep, made_teacher_deeper: encoder depths 1,1,2,2,2 ->
# 1,1,2,6,6 -> 1,1,4,8,8, 2.51 GMACs per 256 x 256 image); then the student
# (efficientvit-sam-mini, depths 1,1,2,6,6, 0.48 GMACs, 1/5.2 of the teacher's encoder)
# distilled from it exactly as from SAM ViT-H: cache-teacher, phase 1 (embeddings, 7,200
# steps), phase 2 with iterative correction clicks (1,800 steps) and the 300-step pair with and
# without them. Every model is scored on a held-out made set (make-eval-set defaults, seed 7,
# which no training shard uses). Run from a checkout's root:
#   bash distill/made_model_run.sh                 # everything, or continue where it stopped
#   FROM=student bash distill/made_model_run.sh    # start at a stage: data teacher
#                                                  # teacher_eval cache student phase2 bundle
#   ONLY=data bash distill/made_model_run.sh       # one stage only (e.g. remake the data)
#   LIMIT=50 bash distill/made_model_run.sh        # quicker evals on the first 50 images
# Training stages pass --resume auto: a killed run continues from run.out_dir/checkpoint.pt
# (exactly: same batches, prompts and RNG draws), a finished one is trained again only if its
# pretrained/ folder is missing. The finished teacher (the five runs: ~9 h on 2 cores) is
# committed under distill/made_model_resume/teacher_deeper/ and the teacher stage uses it;
# REDO_TEACHER=1 trains the whole chain again (the committed intermediate teachers are not
# used then: each run starts from the previous one's runs/made/ folder). Training runs
# data-parallel on NPROC processes (default 2, torchrun on the CPU; a resumed run needs the
# same NPROC), each with THREADS (default 1) intra-op threads: on 2 cores, two 1-thread ranks
# do ~1.9x the samples per second of one 2-thread process.
set -euo pipefail
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
R=runs/made
PY=${PY:-python}
NPROC=${NPROC:-2}
FROM=${FROM:-data}
ONLY=${ONLY:-}
EVAL=(--dataset coco --annotations $R/heldout_coco/annotations/instances_val.json
      --images $R/heldout_coco/images --device cpu ${LIMIT:+--limit $LIMIT})
TEACHER=(--teacher-kind efficientvit --teacher-name efficientvit-sam-mini-teacher
         --teacher $R/teacher_deeper/pretrained)
MSE=(--shards $R/heldout_shards/sa_000000.tar --student-model efficientvit-sam-mini "${TEACHER[@]}")
mkdir -p $R/eval
timed() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0)) s" | tee -a $R/eval/wall_times.txt; }
train() {  # train [NPROC] CLI CONFIG [KEY=VALUE ...]: skipped when the run's pretrained/ exists
    local n=1; [[ $1 =~ ^[0-9]+$ ]] && { n=$1; shift; }
    local cli=$1 config=$2; shift 2
    local sets=(); (($#)) && sets=(--set "$@")
    local out; out=$($PY -c "import sys; from distill.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).run.out_dir)" "$config" "$@")
    [[ -f $out/pretrained/model.safetensors ]] && { echo "$config: $out/pretrained exists"; return; }
    local name; name=$(basename "$out")
    if ((n > 1)); then
        timed "$name" env ACCELERATE_USE_CPU=true $PY -m torch.distributed.run --nproc_per_node "$n" \
            -m distill "$cli" --config "$config" "${sets[@]}" --resume auto
    else
        timed "$name" $PY -m distill "$cli" --config "$config" "${sets[@]}" --resume auto
    fi
}
score() {  # score MODEL RUN [feed]: box and 1/3-click (unfed) mIoU of $R/RUN/pretrained, with
    # "feed" also 3-click with the previous logits fed back; side by side, one process each
    local ck=$R/$2/pretrained/model.safetensors
    timed "eval_box_$2" $PY -m eval box "${EVAL[@]}" --model "$1" --checkpoint $ck --output $R/eval/$2_box.json &
    timed "eval_point_$2" $PY -m eval point "${EVAL[@]}" --model "$1" --checkpoint $ck --num-clicks 3 \
        --output $R/eval/$2_point.json &
    if [[ ${3:-} == feed ]]; then
        timed "eval_point_feed_$2" $PY -m eval point "${EVAL[@]}" --model "$1" --checkpoint $ck \
            --num-clicks 3 --feed-logits --output $R/eval/$2_point_feed.json &
    fi
    wait_all
}
wait_all() { local pid; for pid in $(jobs -p); do wait "$pid"; done; }  # fails if any job failed
committed() {  # committed RUN: copy distill/made_model_resume/RUN to $R/RUN unless REDO_TEACHER
    local seed=distill/made_model_resume/$1
    if [[ -z ${REDO_TEACHER:-} && -f $seed/pretrained/model.safetensors && \
          ! -f $R/$1/pretrained/model.safetensors ]]; then
        mkdir -p "$R/$1" && cp -r "$seed"/* "$R/$1/"
        echo "$1: the committed one from $seed (step $(tail -1 "$seed/metrics.csv" | cut -d, -f1))"
    fi
}
stages=(data teacher teacher_eval cache student phase2 bundle)
for name in "$FROM" ${ONLY:+"$ONLY"}; do
    [[ " ${stages[*]} " == *" $name "* ]] || { echo "no stage '$name'; the stages: ${stages[*]}" >&2; exit 2; }
done
run=0
for stage in "${stages[@]}"; do
    [[ $stage == "$FROM" ]] && run=1
    [[ $run == 1 ]] || continue
    [[ -z $ONLY || $stage == "$ONLY" ]] || continue
    case $stage in
    data)  # training shards (seeds 0, 2, 4 and 5: 6,000 images), a validation set for
        # training's own checks (seed 11), held-out shards and eval set (seed 7, make-eval-set
        # defaults)
        for s in a:0:30 b:2:30 d:4:30 e:5:30; do
            IFS=: read -r name seed num <<< "$s"
            last=$(printf 'sa_%06d.tar' $((num - 1)))
            [[ -f $R/shards_$name/$last ]] || $PY -m effvit_sam make-shards --out $R/shards_$name \
                --num-shards "$num" --images-per-shard 50 --seed "$seed" --image-size 512
        done
        [[ -f $R/val_coco/annotations/instances_val.json ]] || $PY -m effvit_sam make-eval-set \
            --out $R/val_coco --num-images 20 --seed 11 --format coco
        [[ -f $R/heldout_shards/sa_000000.tar ]] || $PY -m effvit_sam make-shards \
            --out $R/heldout_shards --num-shards 1 --images-per-shard 50 --seed 7 --image-size 512
        [[ -f $R/heldout_coco/annotations/instances_val.json ]] || $PY -m effvit_sam make-eval-set \
            --out $R/heldout_coco --num-images 200 --seed 7 --format coco ;;
    teacher)  # the finished teacher is committed (distill/made_model_resume/teacher_deeper):
        # used as it is unless REDO_TEACHER=1 trains the chain again, each run from the last
        committed teacher_deeper
        if [[ ! -f $R/teacher_deeper/pretrained/model.safetensors ]]; then
            train "$NPROC" finetune made_teacher
            train "$NPROC" finetune made_teacher_more
            train "$NPROC" finetune made_teacher_ritm model.init=$R/teacher_more/pretrained
            train "$NPROC" finetune made_teacher_deep model.init=$R/teacher_ritm/pretrained
            train "$NPROC" finetune made_teacher_deeper model.init=$R/teacher_deep/pretrained
        fi ;;
    teacher_eval)
        score efficientvit-sam-mini-teacher teacher_deeper feed ;;
    cache)  # the teacher's embeddings of the four training sets, once
        for name in a b d e; do
            [[ -f $R/cache_deeper_$name/sa_000029.tar ]] || timed cache_teacher_$name \
                env ACCELERATE_USE_CPU=true $PY -m torch.distributed.run --nproc_per_node "$NPROC" \
                -m distill cache-teacher --shards "$R/shards_$name/sa_{000000..000029}.tar" \
                --out $R/cache_deeper_$name --kind efficientvit --name efficientvit-sam-mini-teacher \
                --checkpoint $R/teacher_deeper/pretrained --device cpu
        done
        $PY -m distill embed-mse "${MSE[@]}" --student-random-init --seed 21 \
            --output $R/eval/embed_mse_before.json ;;
    student)  # phase 1: the student encoder learns the teacher's embeddings
        train "$NPROC" distill made_student_deep_phase1
        $PY -m distill embed-mse "${MSE[@]}" --student $R/student_deep_p1/pretrained \
            --output $R/eval/embed_mse_after.json
        score efficientvit-sam-mini student_deep_p1 ;;
    phase2)  # 300 steps without correction clicks and 300 with them (the comparison), then
        # the 1,800-step phase 2 with them (the bundled student)
        train "$NPROC" finetune made_student_deep_phase2_noclicks
        train "$NPROC" finetune made_student_deep_phase2 train.steps=300 \
            run.out_dir=$R/student_deep_p2_clicks300
        train "$NPROC" finetune made_student_deep_phase2
        score efficientvit-sam-mini student_deep_p2_noclicks feed
        score efficientvit-sam-mini student_deep_p2_clicks300 feed
        score efficientvit-sam-mini student_deep_p2 feed ;;
    bundle)  # the phase-2 student with clicks becomes the bundled model
        mkdir -p effvit_sam/bundled/efficientvit-sam-mini
        cp $R/student_deep_p2/pretrained/{config.json,model.safetensors} \
            effvit_sam/bundled/efficientvit-sam-mini/
        $PY -c "import effvit_sam; effvit_sam.from_pretrained('efficientvit-sam-mini')"
        echo "bundled: $(du -h effvit_sam/bundled/efficientvit-sam-mini/model.safetensors)" ;;
    esac
done
