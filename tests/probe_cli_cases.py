"""The command-line cases of :mod:`tests.probe_bad_inputs`: ``python -m effvit_sam`` /
``distill`` / ``eval`` / ``demo`` with bad arguments and the bad files of
:mod:`tests.probe_files` (names relative to the probe's working folder)."""

from __future__ import annotations

from tests.probe_bad_inputs import cli

T = "--model efficientvit-sam-tiny"
R = f"{T} --random-weights"
SEG = "-m effvit_sam segment"
SEGP = f"{SEG} scene.png {R} --point 3,3"
TILED = f"-m effvit_sam segment-tiled scene.tif {R}"
EXPORT = "-m effvit_sam export-onnx"
DATA = "--dataset coco --images coco/images --device cpu"
EVAL = f"-m effvit_sam eval box {DATA} --annotations coco/ann.json"
EVALR = f"{EVAL} {R}"
DET = f"-m effvit_sam eval box-from-detector {DATA} --annotations coco/ann.json {R}"
P1 = "-m effvit_sam distill --config smoke_phase1 --set run.out_dir=run1"
P2 = "-m effvit_sam finetune --config smoke_phase2 --set"
TRAIN2 = ("data.batch_size=1 data.max_masks=2 prompts.iterative_rounds=1 train.steps=3 "
          "run.log_every=1 run.save_every=3")
SHARDS = "--num-shards 1 --images-per-shard 1"
DEMO = "-m effvit_sam demo"
CACHE = "-m effvit_sam cache-teacher --kind efficientvit --name efficientvit-sam-tiny"
MSE = "-m effvit_sam embed-mse --shards shards/sa_000000.tar --student-model efficientvit-sam-tiny"

SEGMENT = [
    cli("segment", "unknown model", f"{SEG} scene.png --model l7 --point 3,3", "'l7'", "--model"),
    cli("segment", "device that is not one", f"{SEGP} --device gpu", "--device", "gpu"),
    cli("segment", "CUDA device without a GPU", f"{SEGP} --device cuda:0", "--device", "cuda"),
    cli("segment", "checkpoint of another variant",
        f"{SEG} scene.png --model mini --checkpoint tiny.pt --point 3,3", "tiny.pt", "mini"),
    cli("segment", "missing checkpoint", f"{SEG} scene.png {T} --checkpoint nope.pt --point 3,3",
        "nope.pt", "not found"),
    cli("segment", "folder that is not save_pretrained",
        f"{SEG} scene.png {T} --checkpoint folder --point 3,3", "folder", "save_pretrained"),
    cli("segment", "corrupt .safetensors",
        f"{SEG} scene.png {T} --checkpoint broken.safetensors --point 3,3", "broken.safetensors"),
    cli("segment", "non-finite checkpoint", f"{SEG} scene.png {T} --checkpoint nan.pt --point 3,3",
        "nan.pt", "finite"),
    cli("segment", "checkpoint missing keys",
        f"{SEG} scene.png {T} --checkpoint partial.pt --point 3,3", "partial.pt", "does not fit"),
    cli("segment", "pickle payload as checkpoint",
        f"{SEG} scene.png {T} --checkpoint pickled.pt --point 3,3", "pickled.pt"),
    cli("segment", "text file as checkpoint",
        f"{SEG} scene.png {T} --checkpoint text.pt --point 3,3", "text.pt"),
    cli("segment", "save_pretrained folder with malformed config.json",
        f"{SEG} scene.png --checkpoint badcfg --point 3,3", "config.json"),
    cli("segment", "save_pretrained folder: config.json of another variant",
        f"{SEG} scene.png --checkpoint othercfg --point 3,3", "othercfg", "does not fit"),
    cli("segment", "save_pretrained folder: config.json with an unknown key",
        f"{SEG} scene.png --checkpoint typocfg --point 3,3", "typocfg", "widht"),
    cli("segment", "no weights anywhere", f"{SEG} scene.png {T} --point 3,3", "no weights",
        "efficientvit-sam-tiny"),
    cli("segment", "file that is not an image", f"{SEG} garbage.png {R} --point 3,3",
        "garbage.png"),
    cli("segment", "0-byte image", f"{SEG} empty.png {R} --point 3,3", "empty.png"),
    cli("segment", "text file named .jpg", f"{SEG} notes.txt.jpg {R} --point 3,3",
        "notes.txt.jpg"),
    cli("segment", "truncated JPEG", f"{SEG} truncated.jpg {R} --point 3,3", "truncated.jpg"),
    cli("segment", "PNG claiming 40000x40000 px", f"{SEG} bomb.png {R} --point 3,3", "bomb.png"),
    cli("segment", "PNG claiming 12000x12000 px, no data", f"{SEG} huge.png {R} --point 3,3",
        "huge.png"),
    cli("segment", "missing image", f"{SEG} none.png {R} --point 3,3", "none.png"),
    cli("segment", "1x600 image", f"{SEG} thin.png {R} --point 3,0", "thin.png", "600x1"),
    cli("segment", "point outside the image", f"{SEG} scene.png {R} --point 300,3", "--point",
        "outside"),
    cli("segment", "box outside the image", f"{SEG} scene.png {R} --box 0,0,500,50", "--box",
        "outside"),
    cli("segment", "point that is not numbers", f"{SEG} scene.png {R} --point a,b", "--point"),
    cli("segment", "point label 5", f"{SEG} scene.png {R} --point 3,3,5", "--point", "label"),
    cli("segment", "box with x1 < x0", f"{SEG} scene.png {R} --box 50,50,10,10", "--box"),
    cli("segment", "NaN point", f"{SEG} scene.png {R} --point nan,3", "--point"),
    cli("segment", "no prompts", f"{SEG} scene.png {R}", "--point", "--everything"),
    cli("segment", "--points-per-side 0", f"{SEG} scene.png {R} --everything --points-per-side 0",
        "--points-per-side"),
    cli("segment", "--points-per-batch 0",
        f"{SEG} scene.png {R} --everything --points-per-batch 0", "--points-per-batch"),
    cli("segment", "--pred-iou-thresh nan",
        f"{SEG} scene.png {R} --everything --pred-iou-thresh nan", "--pred-iou-thresh"),
    cli("segment", "--stability-score-thresh 2",
        f"{SEG} scene.png {R} --everything --stability-score-thresh 2",
        "--stability-score-thresh"),
    cli("segment", "--crop-n-layers -1", f"{SEG} scene.png {R} --everything --crop-n-layers -1",
        "--crop-n-layers"),
    cli("segment", "--min-mask-region-area -5",
        f"{SEG} scene.png {R} --everything --min-mask-region-area -5", "--min-mask-region-area"),
    cli("segment", "--output onto a folder", f"{SEGP} --output dir.png", "--output", "dir.png"),
    cli("segment", "--json that is a folder", f"{SEGP} --json folder", "folder"),
    cli("segment", "--output with no picture suffix", f"{SEGP} --output overlay", "overlay"),
]

TILED_CASES = [
    cli("segment-tiled", "--tile 0", f"{TILED} --point 3,3 --tile 0", "--tile"),
    cli("segment-tiled", "--overlap >= --tile", f"{TILED} --point 3,3 --tile 64 --overlap 64",
        "--overlap"),
    cli("segment-tiled", "--merge-iou 1.5", f"{TILED} --everything --merge-iou 1.5",
        "--merge-iou"),
    cli("segment-tiled", "--resume state file that is not JSON",
        f"{TILED} --everything --resume tiled_state.json", "tiled_state.json"),
    cli("segment-tiled", "non-TIFF image over --max-pixels",
        f"-m effvit_sam segment-tiled big.png {R} --point 3,3 --max-pixels 1000", "big.png"),
    cli("segment-tiled", "--cache-mb -1", f"{TILED} --point 3,3 --cache-mb -1", "--cache-mb"),
    cli("segment-tiled", "--batch-size 0", f"{TILED} --everything --batch-size 0",
        "--batch-size"),
    cli("segment-tiled", "missing image", f"-m effvit_sam segment-tiled none.tif {R} --point 3,3",
        "none.tif"),
]

EXPORT_CASES = [
    cli("export-onnx", "unknown model", f"{EXPORT} --model l7 --out onnx", "'l7'"),
    cli("export-onnx", "no weights", f"{EXPORT} {T} --out onnx", "no weights"),
    cli("export-onnx", "checkpoint of another variant",
        f"{EXPORT} --model mini --checkpoint tiny.pt --out onnx", "tiny.pt", "mini"),
    cli("export-onnx", "non-finite checkpoint", f"{EXPORT} {T} --checkpoint nan.pt --out onnx",
        "nan.pt"),
    cli("export-onnx", "--out is a file", f"{EXPORT} {R} --out a_file", "a_file"),
]

EVAL_CASES = [
    cli("eval", "no --checkpoint and no weights", f"{EVAL} {T}", "no weights"),
    cli("eval", "checkpoint of another variant", f"{EVAL} --model mini --checkpoint tiny.pt",
        "tiny.pt", "mini"),
    cli("eval", "--limit 0", f"{EVALR} --limit 0", "--limit"),
    cli("eval", "--num-clicks 0", f"-m effvit_sam eval point {DATA} --annotations coco/ann.json "
        f"{R} --num-clicks 0", "--num-clicks"),
    cli("eval", "--max-prompts 0", f"{EVALR} --max-prompts 0", "--max-prompts"),
    cli("eval", "--random-weights and --checkpoint", f"{EVALR} --checkpoint tiny.pt",
        "--random-weights", "--checkpoint"),
    cli("eval", "CUDA device without a GPU", f"{EVALR} --device cuda", "--device", "cuda"),
    cli("eval", "--dataset lvis on a COCO file",
        f"-m effvit_sam eval box --dataset lvis --images coco/images --annotations coco/ann.json "
        f"{R}", "ann.json", "--dataset"),
    cli("eval", "malformed annotation JSON",
        f"-m effvit_sam eval box {DATA} --annotations coco/bad_ann.json {R}", "bad_ann.json"),
    cli("eval", "annotation file that is a list",
        f"-m effvit_sam eval box {DATA} --annotations coco/list_ann.json {R}", "list_ann.json"),
    cli("eval", "annotation file without 'images'",
        f"-m effvit_sam eval box {DATA} --annotations coco/no_images.json {R}", "no_images.json",
        "images"),
    cli("eval", "missing annotation file",
        f"-m effvit_sam eval box {DATA} --annotations none.json {R}", "none.json"),
    cli("eval", "missing image folder", f"-m effvit_sam eval box --dataset coco --images nowhere "
        f"--annotations coco/ann.json {R}", "nowhere"),
    cli("eval", "image file missing (skipped and counted)",
        f"-m effvit_sam eval box {DATA} --annotations coco/no_file.json {R}", "missing.jpg",
        "1 unreadable images", exits=(0, 2)),
    cli("eval", "GT RLE too short (skipped and counted)",
        f"-m effvit_sam eval box {DATA} --annotations coco/short_rle.json {R}", "bad_rle 1",
        exits=(0,)),
    cli("eval", "GT RLE of another size (skipped and counted)",
        f"-m effvit_sam eval box {DATA} --annotations coco/wrong_size.json {R}", "bad_rle 1",
        exits=(0,)),
    cli("eval", "GT polygon of 5 numbers (skipped and counted)",
        f"-m effvit_sam eval box {DATA} --annotations coco/polygon_odd.json {R}",
        "bad_polygon 1", exits=(0,)),
    cli("eval", "GT polygon far off the image (skipped and counted)",
        f"-m effvit_sam eval box {DATA} --annotations coco/polygon_out.json {R}", "1",
        "skipped (bad data, not scored)", exits=(0,)),
    cli("eval", "GT box far outside its image (skipped and counted)",
        f"-m effvit_sam eval box {DATA} --annotations coco/box_off.json {R}", "box_off_image 1",
        exits=(0,)),
    cli("eval", "detections not JSON", f"{DET} --detections coco/dets_text.json",
        "--detections", "dets_text.json"),
    cli("eval", "detections not a list", f"{DET} --detections coco/dets_dict.json",
        "--detections", "dets_dict.json"),
    cli("eval", "detection without category_id/score", f"{DET} --detections coco/dets_keys.json",
        "dets_keys.json", "entry 1"),
    cli("eval", "detection bbox of 2 numbers", f"{DET} --detections coco/dets_bbox.json",
        "dets_bbox.json", "bbox"),
    cli("eval", "missing detections file", f"{DET} --detections none.json", "none.json"),
    cli("eval", "box-from-detector without --detections", DET, "--detections"),
    cli("eval", "--detections given in box mode",
        f"{EVALR} --detections coco/dets_dict.json", "--detections"),
    cli("eval", "detection with NaN score (skipped and counted)",
        f"{DET} --detections coco/dets_nan.json", "detection_bad_score 1", exits=(0,)),
    cli("eval", "detection far off the image (skipped and counted)",
        f"{DET} --detections coco/dets_far.json", "detection_off_image 1", exits=(0,)),
    cli("eval", "--output that is a folder", f"{EVALR} --output folder", "--output", "folder"),
    cli("eval", "python -m eval, unknown mode",
        f"-m eval boxes {DATA} --annotations coco/ann.json {R}", "boxes"),
]

MAKE = [
    cli("make-data", "make-shards --image-size 3",
        f"-m effvit_sam make-shards --out s1 {SHARDS} --image-size 3", "--image-size"),
    cli("make-data", "make-shards --seed -1",
        f"-m effvit_sam make-shards --out s1 {SHARDS} --seed -1", "--seed"),
    cli("make-data", "make-shards --num-shards 0",
        "-m effvit_sam make-shards --out s1 --num-shards 0 --images-per-shard 1", "--num-shards"),
    cli("make-data", "make-shards --images-per-shard 0",
        "-m effvit_sam make-shards --out s1 --num-shards 1 --images-per-shard 0",
        "--images-per-shard"),
    cli("make-data", "make-shards --out is a file",
        f"-m effvit_sam make-shards --out a_file {SHARDS} --image-size 64", "a_file"),
    cli("make-data", "make-eval-set --out is a file",
        "-m effvit_sam make-eval-set --out a_file --num-images 1 --image-size 64", "a_file"),
    cli("make-data", "make-eval-set --num-images 0",
        "-m effvit_sam make-eval-set --out e1 --num-images 0", "--num-images"),
    cli("make-data", "make-eval-set --image-size 8",
        "-m effvit_sam make-eval-set --out e1 --num-images 1 --image-size 8", "--image-size"),
    cli("make-data", "python -m distill make-eval-set --format yaml",
        "-m distill make-eval-set --out e1 --num-images 1 --format yaml", "--format"),
]

TRAINING = [
    cli("training", "unknown --set key", f"{P1} train.lrr=1e-4", "train.lrr", "lrr"),
    cli("training", "--set value of the wrong type", f"{P1} data.max_masks=eight",
        "data.max_masks", "eight"),
    cli("training", "--set value that is not YAML", f"{P1} train.betas=[0.9,", "train.betas"),
    cli("training", "--set without '='", f"{P1} train.lr", "train.lr"),
    cli("training", "--set unknown section", f"{P1} optim.lr=1", "optim"),
    cli("training", "unknown recipe", "-m effvit_sam distill --config l9_phase1", "l9_phase1"),
    cli("training", "recipe with a YAML syntax error", "-m effvit_sam distill --config bad.yaml",
        "bad.yaml", "line 4"),
    cli("training", "recipe with a misspelt section",
        "-m effvit_sam finetune --config unknown_key.yaml", "unknown_key.yaml", "trian"),
    cli("training", "recipe that is a YAML list", "-m effvit_sam finetune --config list.yaml",
        "list.yaml"),
    cli("training", "phase-1 recipe given to finetune",
        "-m effvit_sam finetune --config smoke_phase1", "smoke_phase1", "distill"),
    cli("training", "train.steps=0", f"{P1} train.steps=0", "train.steps"),
    cli("training", "data.batch_size=0", f"{P1} data.batch_size=0", "data.batch_size"),
    cli("training", "train.lr=-1", f"{P1} train.lr=-1", "train.lr"),
    cli("training", "train.mixed_precision=fp8", f"{P1} train.mixed_precision=fp8",
        "mixed_precision"),
    cli("training", "model.name=l7", f"{P1} model.name=l7", "l7"),
    cli("training", "model.init missing", f"{P2} model.init=none.pt run.out_dir=run2",
        "model.init", "none.pt"),
    cli("training", "non-empty run.out_dir without --resume",
        "-m effvit_sam distill --config smoke_phase1 --set run.out_dir=occupied", "occupied",
        "--resume"),
    cli("training", "run.out_dir is a file",
        "-m effvit_sam distill --config smoke_phase1 --set run.out_dir=a_file", "a_file"),
    cli("training", "--resume and --overwrite", f"{P1} --resume auto --overwrite", "--overwrite"),
    cli("training", "--resume missing file", f"{P1} --resume no.pt", "no.pt"),
    cli("training", "--resume auto without a checkpoint",
        "-m effvit_sam distill --config smoke_phase1 --set run.out_dir=occupied --resume auto",
        "--resume auto", "checkpoint.pt"),
    cli("training", "--resume a weights file", f"{P1} --resume tiny.pt", "tiny.pt"),
    cli("training", "--resume a pickle payload", f"{P1} --resume pickled.pt", "pickled.pt"),
    cli("training", "--resume a text file", f"{P1} --resume text.pt", "text.pt"),
    cli("training", "--resume written by 2 processes", f"{P1} --resume world2.pt", "world2.pt",
        "2 processes"),
    cli("training", "--resume non-finite checkpoint", f"{P1} --resume nan_ckpt.pt", "nan_ckpt.pt",
        "finite"),
    cli("training", "data.shards that match no file",
        f"{P2} data.shards=nowhere/sa_000000.tar run.out_dir=run3 {TRAIN2}", "nowhere"),
    cli("training", "shard that is not a tar",
        f"{P2} data.shards=junk/sa_000000.tar run.out_dir=run4 {TRAIN2}", "data.shards"),
    cli("training", "shard whose every RLE is too short",
        f"{P2} data.shards=allbad/sa_000000.tar run.out_dir=run5 {TRAIN2}", "data.shards"),
    cli("training", "corrupt image and too-short RLE in a shard (skipped and counted)",
        f"{P2} data.shards=dirty/sa_000000.tar run.out_dir=run6 {TRAIN2}", "bad_image=1",
        "data skipped over the run (all ranks): bad_image=1 bad_rle=1", exits=(0,)),
    cli("training", "truncated shard (skipped and counted)",
        f"{P2} data.shards=cut/sa_000000.tar run.out_dir=run7 {TRAIN2}", "missing_member: sa_",
        "data skipped over the run (all ranks): missing_member=1", exits=(0,)),
    cli("training", "train.lr=1e30 (diverges)",
        f"{P2} data.shards=shards/sa_000000.tar run.out_dir=run8 {TRAIN2} train.lr=1e30 "
        "train.steps=6 train.max_nonfinite_steps=2 train.clip_grad=null", "diverged"),
    cli("training", "python -m distill, unknown command", "-m distill train --config x", "train"),
    cli("training", "cache-teacher, shards that match no file",
        f"{CACHE} --random-init --shards nowhere/sa_000000.tar --out c1", "nowhere"),
    cli("training", "cache-teacher --batch-size 0",
        f"{CACHE} --random-init --shards shards/sa_000000.tar --out c1 --batch-size 0",
        "--batch-size"),
    cli("training", "cache-teacher, SAM teacher without a checkpoint",
        "-m effvit_sam cache-teacher --kind sam --name vit_b --shards shards/sa_000000.tar "
        "--out c1", "--kind sam", "--checkpoint"),
    cli("training", "embed-mse, missing student", f"{MSE} --student none.pt --teacher pretrained",
        "--student", "none.pt"),
    cli("training", "embed-mse, missing teacher", f"{MSE} --student-random-init --teacher nope",
        "--teacher", "nope"),
    cli("training", "embed-mse --max-images 0",
        f"{MSE} --student-random-init --teacher pretrained --teacher-kind efficientvit "
        "--teacher-name efficientvit-sam-tiny --max-images 0", "--max-images"),
]

def _demo(name: str, command: str, *expect: str):
    return cli("demo", name, command, *expect, timeout=60.0)


DEMO_CASES = [  # a bad value that is accepted starts the server: killed at the timeout
    _demo("--port 0", f"{DEMO} {R} --port 0", "--port"),
    _demo("--port 70000", f"{DEMO} {R} --port 70000", "--port"),
    _demo("missing checkpoint", f"{DEMO} {T} --checkpoint nope.pt", "nope.pt"),
    _demo("unknown model", f"{DEMO} --model l7 --random-weights", "'l7'"),
    _demo("CUDA device without a GPU", f"-m demo {R} --device cuda:0", "--device"),
    _demo("--points-per-side 0", f"{DEMO} {R} --points-per-side 0", "--points-per-side"),
    _demo("--max-sessions 0", f"{DEMO} {R} --max-sessions 0", "--max-sessions"),
    _demo("--session-ttl -5", f"{DEMO} {R} --session-ttl -5", "--session-ttl"),
    _demo("--max-pixels 0", f"{DEMO} {R} --max-pixels 0", "--max-pixels"),
]

CLI_CASES = [*SEGMENT, *TILED_CASES, *EXPORT_CASES, *EVAL_CASES, *MAKE, *TRAINING, *DEMO_CASES]
