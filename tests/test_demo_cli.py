"""``effvit-sam demo`` options and weight loading (no server started here)."""

from __future__ import annotations

import pytest
import torch

from demo.cli import load_model, parse_args
from effvit_sam import build_sam
from effvit_sam.checkpoint import CheckpointError
from effvit_sam.errors import UserError

CPU = torch.device("cpu")


def test_defaults_and_checks():
    args = parse_args([])
    # No --model: the weight policy picks l0 (official file found) or the bundled model.
    assert (args.model, args.host, args.port, args.device) == (None, "127.0.0.1", 7860, "cpu")
    assert args.checkpoint is None and not args.random_weights
    with pytest.raises(SystemExit):  # one source of weights at a time
        parse_args(["--checkpoint", "w.pt", "--random-weights"])
    with pytest.raises(UserError, match=r"--port must be in 1\.\.65535, got 70000"):
        parse_args(["--port", "70000"])
    with pytest.raises(UserError, match="--points-per-side must be positive, got 0"):
        parse_args(["--points-per-side", "0"])
    assert parse_args(["--model", "xl1"]).model == "xl1"


def test_unknown_model_is_a_user_error(capsys):
    from effvit_sam.cli import main

    assert main(["demo", "--model", "l7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("effvit-sam demo: error: unknown model 'l7' (--model); valid names: "
                          "efficientvit-sam-l0")
    assert "Traceback" not in err


def test_the_console_command_routes_here():
    from effvit_sam.cli import COMMANDS

    assert COMMANDS["demo"][:2] == ("demo.cli", "main")


def test_checkpoint_is_loaded_strictly(tmp_path):
    source = build_sam("efficientvit-sam-tiny")
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    model, weights = load_model("efficientvit-sam-tiny", checkpoint=path, random_weights=False,
                                offline=True, device=CPU)
    assert (weights.kind, weights.path) == ("checkpoint", path)
    assert weights.description == f"weights: {path} (checkpoint, efficientvit-sam-tiny)"
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
    assert weights.is_random and model.config.name == "efficientvit-sam-tiny"
    assert "masks are meaningless" in weights.description
    # The tiny model has no released weights: without --random-weights the command stops and
    # names the ways forward instead of silently serving random masks.
    with pytest.raises(UserError, match="--checkpoint PATH .*--random-weights"):
        load_model("tiny", checkpoint=None, random_weights=False, offline=True, device=CPU)


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(UserError, match="efficientvit-sam-l0"):
        load_model("l7", checkpoint=None, random_weights=True, offline=True, device=CPU)


def test_offline_never_downloads_and_online_does(monkeypatch, tmp_path):
    """``--offline`` only looks in the cache; without it the official file is downloaded (here
    a stand-in download that writes a tiny model, with tiny given a hub file name)."""
    import dataclasses

    import huggingface_hub

    from effvit_sam.configs import MODEL_CONFIGS

    tiny = MODEL_CONFIGS["efficientvit-sam-tiny"]
    monkeypatch.setitem(MODEL_CONFIGS, "efficientvit-sam-tiny",
                        dataclasses.replace(tiny, hub_file="efficientvit_sam_tiny.pt"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        path = tmp_path / filename
        torch.save(build_sam("efficientvit-sam-tiny").state_dict(), path)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(UserError, match="efficientvit_sam_tiny.pt in the Hugging Face cache"):
        load_model("tiny", checkpoint=None, random_weights=False, offline=True, device=CPU)
    assert calls == []
    model, weights = load_model("tiny", checkpoint=None, random_weights=False, offline=False,
                                device=CPU)
    assert calls == [("mit-han-lab/efficientvit-sam", "efficientvit_sam_tiny.pt")]
    assert weights.kind == "hub" and weights.path == tmp_path / "efficientvit_sam_tiny.pt"
    assert not weights.is_random


def test_bundled_weights_are_named_on_the_page(monkeypatch, tmp_path):
    from effvit_sam import save_pretrained, weights

    save_pretrained(build_sam("efficientvit-sam-tiny"), tmp_path / "efficientvit-sam-tiny")
    monkeypatch.setattr(weights, "bundled_root", lambda: tmp_path)
    _, info = load_model("tiny", checkpoint=None, random_weights=False, offline=True,
                         device=CPU)
    assert info.kind == "bundled" and not info.is_random
    assert "bundled model trained on synthetic scenes" in info.description


def test_latency_tool_reports_encode_click_and_ratio(capsys):
    from demo.latency import main

    assert main(["--model", "efficientvit-sam-tiny", "--clicks", "2"]) == 0
    out = capsys.readouterr().out
    assert "first encode (upload handler)" in out and "median of 2" in out
    assert "encode / click" in out


def test_bundled_banner_shown_only_for_bundled_weights():
    gr = pytest.importorskip("gradio")
    from demo.app import build_app
    from demo.session import DemoBackend

    model = build_sam("efficientvit-sam-tiny")
    for bundled in (True, False):
        backend = DemoBackend(model=model, model_name="efficientvit-sam-tiny", weights="w",
                              random_weights=False, device=CPU, bundled=bundled)
        app = build_app(backend)
        banners = [b for b in app.blocks.values()
                   if isinstance(b, gr.HTML) and "bundled-weights-banner" in str(b.value)]
        assert len(banners) == 1 and banners[0].visible is bundled
        assert "trained on synthetic scenes" in banners[0].value
