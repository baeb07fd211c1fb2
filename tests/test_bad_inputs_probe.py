"""The bad-input probe (``tests/probe_bad_inputs.py``) cannot rot: a few of its own cases run
through its own functions and get the class and message its table reports; its classifier
tells clear from poor from wrong; and the small fixes it led to (a decompression-bomb PNG, a
0-pixel resize, a malformed predictor device) answer with messages naming the input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from effvit_sam import EfficientViTSamPredictor, build_sam, geometry
from effvit_sam.io import read_image
from tests import probe_files
from tests.probe_api_cases import API_CASES, namespace
from tests.probe_bad_inputs import Case, all_cases, classify_cli, run_cases, table
from tests.probe_cli_cases import CLI_CASES


def _case(name: str) -> Case:
    found = [c for c in all_cases() if c.name == name]
    assert len(found) == 1, name
    return found[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    t = tmp_path_factory.mktemp("probe")
    probe_files._images(t)  # the pictures and run files only: the cases here need no more
    probe_files._runs(t)
    (t / "folder").mkdir()
    (t / "shards").mkdir()
    (t / "shards" / "sa_000000.tar").touch()  # exists: the checks after it are reached
    return t


def test_probe_cases_get_their_class_and_message(workdir) -> None:
    names = ['multimask_output="no"', "pred_iou_thresh=NaN",
             "from_pretrained of a missing local folder",
             "read_image of a PNG claiming 40000x40000", "make-shards --image-size 3"]
    cases = [_case(n) for n in names]
    # fresh: the CLI case in a new interpreter (no fork inside pytest's process)
    answers = run_cases(cases, workdir, namespace=namespace, fresh=True)
    assert [a.klass for a in answers] == ["clear"] * 5, answers
    assert [a.message for a in answers[:4]] == [
        "TypeError: multimask_output must be True or False, got 'no' (str)",
        "ValueError: pred_iou_thresh must be in [0, 1], got nan",
        "CheckpointNotFoundError: no such directory: /missing/dir",
        f"ValueError: bomb.png is too large to read: it claims more than "
        f"{2 * Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS x 2)"]
    assert answers[4].code == "exit 2"
    assert answers[4].message == ("effvit-sam make-shards: error: --image-size 3 is too small: "
                                  "image long side must be at least 32 pixels, got 3")
    text = table(cases, answers)
    assert text.startswith("**5 bad inputs tried: 5 clear, 0 poor, 0 wrong**")
    assert "| io | read_image of a PNG claiming 40000x40000 | `read_image(\"bomb.png\")` |" in text


def test_classifier_tells_poor_and_wrong_from_clear() -> None:
    case = Case("segment", "x", argv=("-m", "effvit_sam", "segment"), expect=("--point",))
    good = "effvit-sam segment: error: --point: point at index [0] is outside"
    assert classify_cli(case, 2, "", good + "\n").klass == "clear"
    assert classify_cli(case, 0, "done\n", "").klass == "wrong"
    assert classify_cli(case, None, "", "").klass == "wrong"  # ran on past its timeout
    tb = "Traceback (most recent call last):\n  File ...\nValueError: --point bad\n"
    assert (classify_cli(case, 1, "", tb).klass, classify_cli(case, 1, "", tb).why) == (
        "poor", "traceback")
    assert classify_cli(case, 2, "", "effvit-sam segment: error: bad value\n").why == (
        "message lacks ['--point']")
    assert classify_cli(case, 1, "", good).why == "exit code 1"
    skip = Case("eval", "y", argv=("-m", "eval"), expect=("bad_rle 1",), exits=(0,))
    report = "mIoU 40.0\nskipped (bad data, not scored): bad_rle 1; failed images: 0\n"
    assert classify_cli(skip, 0, report, "").klass == "clear"
    assert classify_cli(skip, 0, "mIoU 40.0\n", "").klass == "wrong"  # scored, not reported


def test_every_case_is_named_once_and_expects_a_name() -> None:
    keys = [(c.area, c.name) for c in all_cases()]
    assert len(keys) == len(set(keys)) == len(CLI_CASES) + len(API_CASES) >= 150
    assert all(c.expect for c in all_cases())


def test_fixes_name_the_input(workdir) -> None:
    with pytest.raises(ValueError, match=r"bomb\.png is too large to read"):
        read_image(workdir / "bomb.png")
    with pytest.raises(ValueError, match=r"^long_side must be >= 1, got 0$"):
        geometry.resize_longest_side(np.zeros((4, 6, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=r"^device 'gpu' is not a torch device"):
        EfficientViTSamPredictor(build_sam("efficientvit-sam-tiny"), device="gpu")


FIXED = {  # probe cases that were poor or wrong before this round, with their answer now
    "--pred-iou-thresh nan": "segment: error: --pred-iou-thresh must be in [0, 1], got nan",
    "--stability-score-thresh 2": "segment: error: --stability-score-thresh must be in [0, 1], "
                                  "got 2.0",
    "--tile 0": "segment-tiled: error: --tile must be at least 64 pixels, got 0",
    "--overlap >= --tile": "segment-tiled: error: --overlap must be >= 0 and less than --tile "
                           "(64), got 64",
    "--merge-iou 1.5": "segment-tiled: error: --merge-iou must be in (0, 1], got 1.5",
    "--cache-mb -1": "segment-tiled: error: --cache-mb must be finite and >= 0, got -1.0",
    "--batch-size 0": "segment-tiled: error: --batch-size must be at least 1, got 0",
    "make-shards --out is a file": "make-shards: error: --out a_file is a file, not a folder",
    "make-eval-set --out is a file": "make-eval-set: error: --out a_file is a file, not a folder",
    "train.lr=-1": "train.lr must be positive, got -1.0",
    "model.name=l7": "model.name=l7: model.name: unknown model 'l7'; valid names: ",
    "data.shards that match no file": "finetune: error: data.shards nowhere/sa_000000.tar: no "
                                      "such file: nowhere/sa_000000.tar",
    "cache-teacher --batch-size 0": "cache-teacher: error: --batch-size must be at least 1, "
                                    "got 0",
    "cache-teacher, SAM teacher without a checkpoint": "cache-teacher: error: --kind sam needs "
                                                       "--checkpoint (the SAM vit_b weights",
    "cache-teacher, shards that match no file": "cache-teacher: error: --shards "
                                                "nowhere/sa_000000.tar: no such file",
    "embed-mse, missing teacher": "embed-mse: error: --teacher nope: no weights file or "
                                  "save_pretrained folder",
    "--output that is a folder": "eval: error: --output folder is a folder: give the report's "
                                 "file path, e.g. report.json",
    "python -m distill, unknown command": "python -m distill: error: unknown command 'train'; "
                                          "commands: distill, finetune, cache-teacher",
}


@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_cli_cases_exit_2_with_one_line(name, workdir, monkeypatch, capsys) -> None:
    from distill.__main__ import main as distill_main
    from effvit_sam.cli import main as cli_main

    monkeypatch.chdir(workdir)
    case = _case(name)
    module, argv = case.argv[1], list(case.argv[2:])
    code = {"effvit_sam": cli_main, "distill": distill_main}[module](argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and FIXED[name] in lines[0], err
