"""One error convention for every command: a user error exits with code 2 and one line,
``PROG: error: MESSAGE`` naming the argument or file, without a traceback; ``--debug`` (or
``EFFVIT_SAM_DEBUG=1``) shows the traceback; internal errors keep theirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from effvit_sam import build_sam, cli

from .eval_toyset import write_toyset

TINY = ["--model", "efficientvit-sam-tiny"]
RANDOM = [*TINY, "--random-weights"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Inputs good and bad; an empty HF cache and bundled root, so no weights are found."""
    from effvit_sam import weights

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(weights, "bundled_root", lambda: tmp_path / "empty-bundled")
    monkeypatch.chdir(tmp_path)  # segment's default overlay path is relative
    Image.new("RGB", (120, 90), (20, 30, 40)).save(tmp_path / "scene.png")
    Image.new("RGB", (600, 1), (20, 30, 40)).save(tmp_path / "thin.png")
    (tmp_path / "garbage.png").write_bytes(b"this is no picture")
    torch.save(build_sam("efficientvit-sam-tiny").state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    (tmp_path / "folder").mkdir()
    ann, images, _ = write_toyset(tmp_path / "coco", "coco")
    (tmp_path / "dets_text.json").write_text("[{'image_id': 1")
    (tmp_path / "dets_dict.json").write_text(json.dumps({"image_id": 1}))
    good = {"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    (tmp_path / "dets_keys.json").write_text(json.dumps([good, {"image_id": 1, "bbox": [1]}]))
    (tmp_path / "dets_bbox.json").write_text(json.dumps([good, {**good, "bbox": [1, 2]}]))
    (tmp_path / "bad_ann.json").write_text("{ nope")
    return tmp_path, ["--dataset", "coco", "--annotations", str(ann), "--images", str(images),
                      "--device", "cpu"]


def _eval(data, mode="box", *extra):
    return ["eval", mode, *data, *extra]


CASES = {
    # segment
    "segment unknown model": (lambda t, d: ["segment", "scene.png", "--model", "l7",
                                            "--point", "3,3"],
                              "unknown model 'l7' (--model); valid names: efficientvit-sam-l0"),
    "segment bad device": (lambda t, d: ["segment", "scene.png", *RANDOM, "--point", "3,3",
                                         "--device", "gpu"],
                           "--device 'gpu' is not a torch device"),
    "segment other variant": (lambda t, d: ["segment", "scene.png", "--model", "mini",
                                            "--checkpoint", "tiny.pt", "--point", "3,3"],
                              "tiny.pt does not fit efficientvit-sam-mini: this is a checkpoint of "
                              "efficientvit-sam-tiny"),
    "segment missing checkpoint": (lambda t, d: ["segment", "scene.png", *TINY, "--checkpoint",
                                                 "nope.pt", "--point", "3,3"],
                                   "checkpoint not found: nope.pt"),
    "segment folder checkpoint": (lambda t, d: ["segment", "scene.png", *TINY, "--checkpoint",
                                                "folder", "--point", "3,3"],
                                  "checkpoint folder is a folder but not a save_pretrained"),
    "segment corrupt safetensors": (lambda t, d: ["segment", "scene.png", *TINY,
                                                  "--checkpoint", "broken.safetensors",
                                                  "--point", "3,3"],
                                    "could not read broken.safetensors as a safetensors file"),
    "segment no weights": (lambda t, d: ["segment", "scene.png", *TINY, "--point", "3,3"],
                           "no weights for efficientvit-sam-tiny; tried: a bundled model"),
    "segment unreadable image": (lambda t, d: ["segment", "garbage.png", *RANDOM, "--point",
                                               "3,3"],
                                 "garbage.png is not a readable image"),
    "segment missing image": (lambda t, d: ["segment", "none.png", *RANDOM, "--point", "3,3"],
                              "image not found: none.png"),
    "segment thin image": (lambda t, d: ["segment", "thin.png", *RANDOM, "--point", "3,0"],
                           "image thin.png is 600x1: too thin for this model"),
    "segment point outside": (lambda t, d: ["segment", "scene.png", *RANDOM, "--point",
                                            "300,3"],
                              "--point: point at index [0] is (300, 3), outside the 120x90"),
    "segment box outside": (lambda t, d: ["segment", "scene.png", *RANDOM, "--box",
                                          "0,0,500,50"],
                            "--box: box corner at index [0, 1] is (500, 50), outside the 120x90"),
    "segment no prompts": (lambda t, d: ["segment", "scene.png", *RANDOM],
                           "give prompts (--point/--box) or --everything"),
    # eval
    "eval without weights": (lambda t, d: _eval(d, "box", *TINY),
                             "no weights for efficientvit-sam-tiny"),
    "eval limit 0": (lambda t, d: _eval(d, "box", *RANDOM, "--limit", "0"),
                     "--limit must be >= 1, got 0"),
    "eval num-clicks 0": (lambda t, d: _eval(d, "point", *RANDOM, "--num-clicks", "0"),
                          "--num-clicks must be >= 1, got 0"),
    "eval detections not JSON": (lambda t, d: _eval(d, "box-from-detector", *RANDOM,
                                                    "--detections", "dets_text.json"),
                                 "--detections: dets_text.json is not valid JSON"),
    "eval detections not a list": (lambda t, d: _eval(d, "box-from-detector", *RANDOM,
                                                      "--detections", "dets_dict.json"),
                                   "--detections dets_dict.json is not a COCO results list"),
    "eval detections missing keys": (lambda t, d: _eval(d, "box-from-detector", *RANDOM,
                                                        "--detections", "dets_keys.json"),
                                     "--detections dets_keys.json: entry 1 has no "
                                     "'category_id', 'score'"),
    "eval detections bad bbox": (lambda t, d: _eval(d, "box-from-detector", *RANDOM,
                                                    "--detections", "dets_bbox.json"),
                                 "entry 1 has a bbox that is not 4 numbers"),
    "eval missing detections": (lambda t, d: _eval(d, "box-from-detector", *RANDOM,
                                                   "--detections", "none.json"),
                                "--detections none.json: file not found"),
    "eval malformed annotations": (lambda t, d: ["eval", "box", "--dataset", "coco",
                                                 "--annotations", "bad_ann.json", "--images",
                                                 ".", *RANDOM],
                                   "--annotations bad_ann.json: "),
    "eval missing annotations": (lambda t, d: ["eval", "box", "--dataset", "coco",
                                               "--annotations", "none.json", "--images", ".",
                                               *RANDOM],
                                 "annotation file not found: none.json"),
    # export-onnx, demo, fastpath-accuracy
    "export without weights": (lambda t, d: ["export-onnx", *TINY, "--out", "onnx"],
                               "no weights for efficientvit-sam-tiny"),
    "export unknown model": (lambda t, d: ["export-onnx", "--model", "l7", "--out", "onnx"],
                             "unknown model 'l7'"),
    "demo bad port": (lambda t, d: ["demo", *RANDOM, "--port", "0"],
                      "--port must be in 1..65535, got 0"),
    "demo bad checkpoint": (lambda t, d: ["demo", *TINY, "--checkpoint", "nope.pt"],
                            "checkpoint not found: nope.pt"),
    "demo cuda without a GPU": (lambda t, d: ["demo", *RANDOM, "--device", "cuda:0"],
                                "--device cuda:0: no CUDA device is available here"),
    "accuracy unreadable image": (lambda t, d: ["fastpath-accuracy", *TINY, "--image",
                                                "garbage.png"],
                                  "--image: garbage.png is not a readable image"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_exit_2_with_one_line(case, files, capsys, monkeypatch):
    tmp, data = files
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv, message = CASES[case][0](tmp, data), CASES[case][1]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0].startswith(f"effvit-sam {argv[0]}: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err


def test_internal_errors_keep_their_traceback(files, monkeypatch):
    from effvit_sam.tools import segment

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not the user's fault")

    monkeypatch.setattr(segment, "_segment_prompts", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["segment", "scene.png", *RANDOM, "--point", "3,3", "--no-fast"])


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
               "HF_HUB_CACHE": str(cwd / "empty-cache"), **env}
    if "EFFVIT_SAM_DEBUG" not in env:
        environ.pop("EFFVIT_SAM_DEBUG", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=300)


def test_module_entry_points_share_the_convention(files):
    tmp, data = files
    proc = _run(["-m", "eval", "box", *data, *RANDOM, "--limit", "0"], tmp)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("python -m eval: error: --limit must be "
                                                    ">= 1, got 0")
    proc = _run(["-m", "demo", *RANDOM, "--port", "0"], tmp)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("python -m demo: error: --port must be in "
                                                    "1..65535, got 0")


def test_debug_shows_the_traceback(files):
    tmp, _ = files
    argv = ["-m", "effvit_sam", "segment", "scene.png", *TINY, "--checkpoint", "nope.pt",
            "--point", "3,3"]
    proc = _run([*argv, "--debug"], tmp)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "CheckpointNotFoundError: checkpoint not found: nope.pt" in proc.stderr
    proc = _run(argv, tmp, EFFVIT_SAM_DEBUG="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr
