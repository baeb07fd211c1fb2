"""Strict checkpoint loading: accepted formats round-trip, every failure is loud and specific."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from effvit_sam import CheckpointError, build_sam, from_pretrained, load_checkpoint, save_pretrained
from effvit_sam.checkpoint import CheckpointNotFoundError, match_variant, read_state_dict


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def trained_tiny():
    torch.manual_seed(1)
    return build_sam("efficientvit-sam-tiny")


@pytest.mark.parametrize("fmt", ["raw.pt", "state_dict.pth", "model.pt", "weights.safetensors"])
def test_round_trip_every_accepted_format(tmp_path, trained_tiny, fmt: str) -> None:
    sd = trained_tiny.state_dict()
    path = tmp_path / fmt
    if fmt == "raw.pt":
        torch.save(sd, path)
    elif fmt == "state_dict.pth":
        torch.save({"state_dict": sd}, path)
    elif fmt == "model.pt":
        torch.save({"model": sd, "step": 7}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    torch.manual_seed(2)
    loaded = build_sam("efficientvit-sam-tiny", checkpoint=path)
    assert _same_weights(loaded, trained_tiny)
    fresh = build_sam("efficientvit-sam-tiny")
    assert not _same_weights(fresh, trained_tiny)
    assert load_checkpoint(fresh, path) is fresh
    assert _same_weights(fresh, trained_tiny)


def test_save_pretrained_from_pretrained(tmp_path, trained_tiny) -> None:
    save_pretrained(trained_tiny, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json",
                                                                     "model.safetensors"]
    loaded = from_pretrained(tmp_path / "run")
    assert loaded.config == trained_tiny.config
    assert _same_weights(loaded, trained_tiny)


def test_save_pretrained_refuses_a_file_and_an_inference_copy(tmp_path, trained_tiny) -> None:
    from effvit_sam.inference import FastPathOptions, optimize_for_inference

    target = tmp_path / "model.pt"
    target.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="model.pt is a file: save_pretrained writes a folder"):
        save_pretrained(trained_tiny, target)
    assert target.read_bytes() == b"keep me"
    fast = optimize_for_inference(trained_tiny, options=FastPathOptions.exact().with_(
        compiled_gelu=False))
    with pytest.raises(ValueError, match="optimize_for_inference copy"):
        save_pretrained(fast, tmp_path / "fast")
    assert not (tmp_path / "fast").exists()


def test_missing_unexpected_and_shape_errors_are_listed(tmp_path, trained_tiny) -> None:
    sd = dict(trained_tiny.state_dict())
    del sd["image_encoder.norm.weight"]
    sd["image_encoder.extra.weight"] = torch.zeros(3)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(2, 2)
    model = build_sam("efficientvit-sam-tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, sd)
    msg = str(info.value)
    assert "missing keys (1): image_encoder.norm.weight" in msg
    assert "unexpected keys (1): image_encoder.extra.weight" in msg
    assert "shape mismatches (1): mask_decoder.iou_token.weight (2, 2) vs model (1, 32)" in msg
    # nothing was half-loaded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_other_variant_is_named(tmp_path) -> None:
    path = tmp_path / "efficientvit_sam_l0.pt"
    torch.save(build_sam("l0").state_dict(), path)
    assert match_variant(read_state_dict(path)) == "efficientvit-sam-l0"
    with torch.device("meta"):
        l1 = build_sam("l1")
    with pytest.raises(CheckpointError, match="this is a checkpoint of efficientvit-sam-l0"):
        load_checkpoint(l1, path)


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_sam("efficientvit-sam-tiny", checkpoint=tmp_path / "nope.pt")
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": {"x": object()}}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(bad)
    listy = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(listy)


def test_from_pretrained_offline_says_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="efficientvit_sam_l0.pt.*checkpoint=PATH"):
        from_pretrained("l0", cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(FileNotFoundError, match="neither a directory"):
        from_pretrained("not-a-model")


def test_corrupt_safetensors_names_the_file(tmp_path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(CheckpointError, match=f"could not read {bad} as a safetensors file"):
        read_state_dict(bad)
    with pytest.raises(CheckpointError, match="is a folder, not a weights file"):
        read_state_dict(tmp_path)


def test_from_pretrained_missing_local_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for path in (str(tmp_path / "missing" / "dir"), "./no/such/run", Path(tmp_path / "gone")):
        with pytest.raises(CheckpointError, match=f"no such directory: {re.escape(str(path))}"):
            from_pretrained(path)


def test_from_pretrained_bad_folders(tmp_path, trained_tiny) -> None:
    folder = save_pretrained(trained_tiny, tmp_path / "run")
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=f"{folder / 'config.json'} is not valid JSON"):
        from_pretrained(folder)
    (folder / "config.json").write_text('{"model_type": "efficientvit-sam", "config": []}')
    with pytest.raises(CheckpointError, match="bad model config"):
        from_pretrained(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointNotFoundError, match="not a save_pretrained folder: no "
                                                      "config.json"):
        from_pretrained(empty)
    save_pretrained(trained_tiny, tmp_path / "noweights")
    (tmp_path / "noweights" / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="no model.safetensors"):
        from_pretrained(tmp_path / "noweights")
    with pytest.raises(CheckpointError, match="is a file, not a save_pretrained directory"):
        from_pretrained(folder / "model.safetensors")
