#!/usr/bin/env bash
# Issue #13: the made-data model, end to end on a CPU, resumable at every stage. A teacher
# (efficientvit-sam-mini-teacher) trained from scratch on made shards and then on more of them
# at a restarted schedule (made_teacher, made_teacher_more), then the student
# (efficientvit-sam-mini, 1/4.9 of the teacher encoder's MACs) distilled from it exactly as
# from SAM ViT-H: cache-teacher, phase 1 (embeddings; 4,800 steps, then 2,400 more at a
# restarted cosine), phase 2 with and without iterative correction clicks (the clicks one
# continued for 1,200 steps on 1,500 more images). Every model is scored
# on a held-out made set (make-eval-set defaults, seed 7, which no training shard uses). Run
# from a checkout's root:
#   bash distill/made_model_run.sh                 # everything, or continue where it stopped
#   FROM=student bash distill/made_model_run.sh    # start at a stage: data teacher teacher_more
#                                                  # teacher_eval cache student phase2 bundle
#   ONLY=data bash distill/made_model_run.sh       # one stage only (e.g. remake the data)
#   LIMIT=50 bash distill/made_model_run.sh        # quicker evals on the first 50 images
# Training stages pass --resume auto: a killed run continues from run.out_dir/checkpoint.pt
# (exactly: same batches, prompts and RNG draws), a finished one is trained again only if its
# pretrained/ folder is missing. The finished teachers (6,000 steps, 2.5 h on 2 cores, then 2,000
# more, 62 min) are committed under distill/made_model_resume/teacher{,_more}/; REDO_TEACHER=1
# retrains both. The teachers, phase 1 and the clicks phase 2 train data-parallel on NPROC
# processes (default 2, torchrun on the CPU; a resumed run needs the same NPROC), each with
# THREADS (default 1) intra-op threads: on 2 cores, two 1-thread ranks do ~1.9x the samples per
# second of one 2-thread process.
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
         --teacher $R/teacher_more/pretrained)
MSE=(--shards $R/heldout_shards/sa_000000.tar --student-model efficientvit-sam-mini "${TEACHER[@]}")
mkdir -p $R/eval
timed() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0)) s" | tee -a $R/eval/wall_times.txt; }
train() {  # train [NPROC] CLI CONFIG: skipped when the run's pretrained/ exists
    local n=1; [[ $1 =~ ^[0-9]+$ ]] && { n=$1; shift; }
    local out; out=$($PY -c "from distill.config import load_config; print(load_config('$2').run.out_dir)")
    [[ -f $out/pretrained/model.safetensors ]] && { echo "$2: $out/pretrained exists"; return; }
    if ((n > 1)); then
        timed "$2" env ACCELERATE_USE_CPU=true $PY -m torch.distributed.run --nproc_per_node "$n" \
            -m distill "$1" --config "$2" --resume auto
    else
        timed "$2" $PY -m distill "$1" --config "$2" --resume auto
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
stages=(data teacher teacher_more teacher_eval cache student phase2 bundle)
for name in "$FROM" ${ONLY:+"$ONLY"}; do
    [[ " ${stages[*]} " == *" $name "* ]] || { echo "no stage '$name'; the stages: ${stages[*]}" >&2; exit 2; }
done
run=0
for stage in "${stages[@]}"; do
    [[ $stage == "$FROM" ]] && run=1
    [[ $run == 1 ]] || continue
    [[ -z $ONLY || $stage == "$ONLY" ]] || continue
    case $stage in
    data)  # training shards (seeds 0, 2 and 4: 4,500 images), a validation set for training's
        # own checks (seed 11), held-out shards and eval set (seed 7, make-eval-set defaults);
        # shards_e (seed 5) only for the student's longer phase 2
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
    teacher)  # the finished teachers are committed (distill/made_model_resume/): used as they
        # are unless REDO_TEACHER=1 trains them again
        committed teacher
        train "$NPROC" finetune made_teacher ;;
    teacher_more)
        committed teacher_more
        train "$NPROC" finetune made_teacher_more ;;
    teacher_eval)
        score efficientvit-sam-mini-teacher teacher_more ;;
    cache)
        for s in a:000029 b:000029 d:000029; do
            IFS=: read -r name last <<< "$s"
            [[ -f $R/cache_$name/sa_$last.tar ]] || timed cache_teacher_$name \
                env ACCELERATE_USE_CPU=true $PY -m torch.distributed.run --nproc_per_node "$NPROC" -m distill cache-teacher \
                --shards "$R/shards_$name/sa_{000000..$last}.tar" --out $R/cache_$name --kind efficientvit \
                --name efficientvit-sam-mini-teacher --checkpoint $R/teacher_more/pretrained --device cpu
        done
        $PY -m distill embed-mse "${MSE[@]}" --student-random-init --seed 1 \
            --output $R/eval/embed_mse_before.json ;;
    student)
        train "$NPROC" distill made_student_phase1
        $PY -m distill embed-mse "${MSE[@]}" --student $R/student_p1/pretrained \
            --output $R/eval/embed_mse_after.json
        score efficientvit-sam-mini student_p1
        train "$NPROC" distill made_student_phase1_more  # 2,400 steps more, restarted cosine
        $PY -m distill embed-mse "${MSE[@]}" --student $R/student_p1_more/pretrained \
            --output $R/eval/embed_mse_after_more.json
        score efficientvit-sam-mini student_p1_more ;;
    phase2)  # without correction clicks (200 steps, one process), then with them (600 steps on
        # NPROC ranks), then 1,200 steps more with them on shards a, b, d and e (the bundled
        # student)
        train finetune made_student_phase2_noclicks
        train "$NPROC" finetune made_student_phase2
        train "$NPROC" finetune made_student_phase2_more
        score efficientvit-sam-mini student_p2_noclicks feed
        score efficientvit-sam-mini student_p2_clicks feed
        score efficientvit-sam-mini student_p2_long feed ;;
    bundle)  # the final student (phase 2 with clicks, continued) becomes the bundled model
        mkdir -p effvit_sam/bundled/efficientvit-sam-mini
        cp $R/student_p2_long/pretrained/{config.json,model.safetensors} \
            effvit_sam/bundled/efficientvit-sam-mini/
        $PY -c "import effvit_sam; effvit_sam.from_pretrained('efficientvit-sam-mini')"
        echo "bundled: $(du -h effvit_sam/bundled/efficientvit-sam-mini/model.safetensors)" ;;
    esac
done
