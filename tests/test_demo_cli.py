"""``effvit-sam demo`` options and weight loading (no server started here)."""

from __future__ import annotations

import pytest
import torch

from demo.cli import load_model, parse_args
from effvit_sam import build_sam
from effvit_sam.checkpoint import CheckpointError

CPU = torch.device("cpu")


def test_defaults_and_checks():
    args = parse_args([])
    assert (args.model, args.host, args.port, args.device) == ("efficientvit-sam-l0",
                                                               "127.0.0.1", 7860, "cpu")
    assert args.checkpoint is None and not args.random_weights
    with pytest.raises(SystemExit):  # one source of weights at a time
        parse_args(["--checkpoint", "w.pt", "--random-weights"])
    with pytest.raises(SystemExit):
        parse_args(["--port", "70000"])
    with pytest.raises(SystemExit):
        parse_args(["--points-per-side", "0"])
    assert parse_args(["--model", "xl1"]).model == "efficientvit-sam-xl1"


def test_unknown_model_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--model", "l7"])
    assert exc.value.code == 2 and "valid names" in capsys.readouterr().err


def test_the_console_command_routes_here():
    from effvit_sam.cli import COMMANDS

    assert COMMANDS["demo"][:2] == ("demo.cli", "main")


def test_checkpoint_is_loaded_strictly(tmp_path):
    source = build_sam("efficientvit-sam-tiny")
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    model, weights = load_model("efficientvit-sam-tiny", checkpoint=path, random_weights=False,
                                offline=True, device=CPU)
    assert weights == f"checkpoint {path}"
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    bad = tmp_path / "bad.pt"
    torch.save({"image_encoder.nope": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError):
        load_model("efficientvit-sam-tiny", checkpoint=bad, random_weights=False, offline=True,
                   device=CPU)


def test_random_weights_only_when_asked(capsys):
    model, weights = load_model("tiny", checkpoint=None, random_weights=True, offline=True,
                                device=CPU)
    assert weights == "random weights" and model.config.name == "efficientvit-sam-tiny"
    # The tiny model has no released weights: without --random-weights the command stops and
    # names both ways forward instead of silently serving random masks.
    with pytest.raises(SystemExit, match="--checkpoint PATH, or --random-weights"):
        load_model("tiny", checkpoint=None, random_weights=False, offline=True, device=CPU)


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(KeyError, match="efficientvit-sam-l0"):
        load_model("l7", checkpoint=None, random_weights=True, offline=True, device=CPU)


def test_latency_tool_reports_encode_click_and_ratio(capsys):
    from demo.latency import main

    assert main(["--model", "efficientvit-sam-tiny", "--clicks", "2"]) == 0
    out = capsys.readouterr().out
    assert "first encode (upload handler)" in out and "median of 2" in out
    assert "encode / click" in out
