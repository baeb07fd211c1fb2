"""``effvit-sam segment`` end to end on the tiny model: overlay, COCO-RLE JSON, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from effvit_sam import EfficientViTSamPredictor, build_sam, cli
from effvit_sam.masks import rle_to_mask
from effvit_sam.tools.segment import main
from effvit_sam.visualize import FOREGROUND

TINY = ["--model", "efficientvit-sam-tiny", "--random-weights"]


@pytest.fixture
def scene(tmp_path):
    canvas = Image.new("RGB", (120, 90), (20, 30, 40))
    ImageDraw.Draw(canvas).ellipse((10, 10, 60, 60), fill=(230, 200, 40))
    path = tmp_path / "scene.png"
    canvas.save(path)
    return path


def test_points_and_boxes_to_overlay_and_json(scene, tmp_path):
    out, js = tmp_path / "o.png", tmp_path / "m.json"
    argv = [str(scene), *TINY, "--point", "30,30", "--point", "100,70,0", "--box", "5,5,65,65",
            "--box", "70,20,118,88", "--output", str(out), "--json", str(js)]
    assert main(argv) == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape == (90, 120, 3)
    assert picture[30, 30].tolist() == list(FOREGROUND)
    doc = json.loads(js.read_text())
    assert doc["mode"] == "prompts" and (doc["height"], doc["width"]) == (90, 120)
    anns = doc["annotations"]
    assert [a["prompt_index"] for a in anns] == [0, 1]  # one mask per box, no multimask
    # The JSON holds exactly what the predictor gives for the same prompts and weights.
    torch.manual_seed(0)
    predictor = EfficientViTSamPredictor(build_sam("efficientvit-sam-tiny"))
    predictor.set_image(np.asarray(Image.open(scene).convert("RGB")))
    masks, scores, _ = predictor.predict([[30, 30], [100, 70]], [1, 0],
                                         [[5, 5, 65, 65], [70, 20, 118, 88]],
                                         multimask_output=False)
    for i, ann in enumerate(anns):
        mask = rle_to_mask(ann["segmentation"])
        assert (mask == masks[i, 0]).mean() > 0.999
        assert ann["area"] == int(mask.sum())
        assert abs(ann["predicted_iou"] - float(scores[i, 0])) < 1e-4


def test_multimask_and_dispatcher(scene, tmp_path):
    js = tmp_path / "m.json"
    argv = ["segment", str(scene), *TINY, "--point", "30,30", "--multimask", "--output",
            str(tmp_path / "o.jpg"), "--json", str(js)]
    assert cli.main(argv) == 0
    anns = json.loads(js.read_text())["annotations"]
    assert [(a["prompt_index"], a["candidate"]) for a in anns] == [(0, 0), (0, 1), (0, 2)]
    assert (tmp_path / "o.jpg").is_file()


def test_everything_mode(scene, tmp_path, capsys):
    js = tmp_path / "e.json"
    argv = [str(scene), *TINY, "--everything", "--points-per-side", "4", "--pred-iou-thresh",
            "0", "--stability-score-thresh", "0", "--output", str(tmp_path / "e.png"),
            "--json", str(js)]
    assert main(argv) == 0
    assert "everything" in capsys.readouterr().err  # the progress bar
    doc = json.loads(js.read_text())
    assert doc["mode"] == "everything"
    for ann in doc["annotations"]:
        assert ann["area"] == int(rle_to_mask(ann["segmentation"]).sum())
        assert ann["crop_box"] == [0, 0, 120, 90]
    assert (tmp_path / "e.png").is_file()


def test_checkpoint_flag(scene, tmp_path, capsys):
    torch.manual_seed(3)
    weights = tmp_path / "tiny.pt"
    torch.save(build_sam("efficientvit-sam-tiny").state_dict(), weights)
    js = tmp_path / "m.json"
    argv = [str(scene), "--model", "efficientvit-sam-tiny", "--checkpoint", str(weights),
            "--box", "5,5,65,65", "--output", str(tmp_path / "o.png"), "--json", str(js)]
    assert main(argv) == 0
    assert f"weights: {weights} (checkpoint, efficientvit-sam-tiny)" in capsys.readouterr().out
    doc = json.loads(js.read_text())
    assert doc["model"] == "efficientvit-sam-tiny"
    assert (doc["weights"]["kind"], doc["weights"]["path"]) == ("checkpoint", str(weights))
    # Without --model the variant is recognised from the file's keys and shapes.
    assert main(argv[:1] + argv[3:]) == 0
    assert "(checkpoint, efficientvit-sam-tiny)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    ([], "exactly one of the two"),
    (["--everything", "--point", "3,3"], "exactly one of the two"),
    (["--point", "130,10"], r"outside the 120x90"),
    (["--box", "60,5,10,50"], "x0 <= x1"),
    (["--point", "3,3", "--output", "x.unknownext"], "unknown picture format"),
])
def test_bad_requests_exit_2(scene, extra, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default overlay path is relative
    assert cli.main(["segment", str(scene), *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("effvit-sam segment: error: ") and re.search(message, err)
    assert "Traceback" not in err and err.count("\n") == 1


def test_missing_weights_and_files(scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert cli.main(["segment", str(scene), "--model", "l0", "--point", "3,3"]) == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "--random-weights" in err
    assert str(tmp_path / "empty-cache") in err  # says where it looked
    assert cli.main(["segment", str(tmp_path / "nope.png"), *TINY, "--point", "3,3"]) == 2
    assert "image not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([str(scene), *TINY, "--point", "3"])
    assert exit_.value.code == 2
    assert "X,Y or X,Y,LABEL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(scene), *TINY, "--point", "3,3,2"])
