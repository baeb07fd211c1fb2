"""The one weight policy (:func:`effvit_sam.weights.resolve_model`), branch by branch.

Everything is laid out by the tests in temporary folders: a Hugging Face cache (through
``HF_HUB_CACHE`` / ``HF_HOME``, with the tiny model given an official file name), a bundled root
(through ``weights.bundled_root``), checkpoints and ``save_pretrained`` folders.
"""

from __future__ import annotations

import dataclasses
import json

# Imported before any test sets HF_* variables, as in a running process whose huggingface_hub
# read them at import: the lookup must read the environment anew.
import huggingface_hub.constants  # noqa: F401
import pytest
import torch

from effvit_sam import build_sam, cli, save_pretrained, weights
from effvit_sam.checkpoint import CheckpointError, CheckpointNotFoundError
from effvit_sam.configs import HUB_REPO_ID, MODEL_CONFIGS
from effvit_sam.errors import UserError
from effvit_sam.weights import BUNDLED_NOTE, bundled_dir, resolve_device, resolve_model

TINY = "efficientvit-sam-tiny"
TINY_FILE = "efficientvit_sam_tiny.pt"


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def trained():
    """A tiny model with weights no seed-0 initialisation gives."""
    torch.manual_seed(7)
    return build_sam(TINY)


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty HF cache and an empty bundled root: nothing to find."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(weights, "bundled_root", lambda: tmp_path / "empty-bundled")


@pytest.fixture
def tiny_is_official(monkeypatch):
    """Give the tiny model an official file name, so the HF-cache branch runs on small files."""
    cfg = MODEL_CONFIGS[TINY]
    monkeypatch.setitem(MODEL_CONFIGS, TINY, dataclasses.replace(cfg, hub_file=TINY_FILE))


def _lay_out_hf_cache(cache, model, filename=TINY_FILE):
    """The hub cache layout huggingface_hub reads: refs/main -> snapshots/<commit>/<file>."""
    repo = cache / f"models--{HUB_REPO_ID.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    path = repo / "snapshots" / commit / filename
    torch.save(model.state_dict(), path)
    return path


# --- 1. --checkpoint: a file or a save_pretrained folder --------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_file(tmp_path, trained, no_weights, suffix):
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pt":
        torch.save({"model": trained.state_dict()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))
    model, info = resolve_model(TINY, checkpoint=path)
    assert _same(model, trained) and not model.training
    assert (info.kind, info.path, info.file, info.model) == ("checkpoint", path, path, TINY)
    assert info.description == f"weights: {path} (checkpoint, {TINY})"
    # No name: the variant is recognised from the file's keys and shapes.
    model, info = resolve_model(None, checkpoint=path)
    assert info.model == TINY and _same(model, trained)


def test_checkpoint_of_another_variant_names_it(tmp_path, trained):
    path = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), path)
    with pytest.raises(CheckpointError, match=f"this is a checkpoint of {TINY}"):
        resolve_model("mini", checkpoint=path)


def test_pretrained_folder_decides_the_model(tmp_path, trained):
    folder = save_pretrained(trained, tmp_path / "run")
    model, info = resolve_model(None, checkpoint=folder)
    assert _same(model, trained)
    assert (info.kind, info.path, info.file) == ("pretrained_dir", folder,
                                                 folder / "model.safetensors")
    assert info.description == f"weights: {folder} (save_pretrained folder, {TINY})"
    assert resolve_model("tiny", checkpoint=folder)[1].model == TINY  # same name: fine
    with pytest.raises(CheckpointError, match=f"holds {TINY} .* but --model is "
                                              "efficientvit-sam-mini"):
        resolve_model("mini", checkpoint=folder)


def test_bad_checkpoint_paths(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=f"checkpoint not found: {tmp_path}/nope"):
        resolve_model(TINY, checkpoint=tmp_path / "nope")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="is a folder but not a save_pretrained folder: "
                                              "no config.json"):
        resolve_model(TINY, checkpoint=tmp_path / "folder")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"expected a \.pt/\.pth/\.safetensors file"):
        resolve_model(TINY, checkpoint=tmp_path / "w.bin")
    with pytest.raises(UserError, match="--checkpoint or --random-weights, not both"):
        resolve_model(TINY, checkpoint=tmp_path / "w.bin", random_weights=True)


# --- 2. the official file in the local Hugging Face cache --------------------------------------

@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hf_cache(tmp_path, trained, monkeypatch, tiny_is_official, variable):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cache = tmp_path / "hf" if variable == "HF_HUB_CACHE" else tmp_path / "hf" / "hub"
    monkeypatch.setenv(variable, str(tmp_path / "hf"))
    path = _lay_out_hf_cache(cache, trained)
    monkeypatch.setattr(weights, "bundled_root", lambda: tmp_path / "empty-bundled")
    model, info = resolve_model("tiny")
    assert _same(model, trained)
    assert (info.kind, info.path) == ("hf_cache", path)
    assert info.description == f"weights: official {TINY_FILE} (Hugging Face cache, {TINY})"


def test_no_model_takes_the_official_default_when_cached(tmp_path, trained, monkeypatch,
                                                         tiny_is_official):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    _lay_out_hf_cache(tmp_path / "hf", trained)
    monkeypatch.setattr(weights, "DEFAULT_MODEL", TINY)
    # A bundled model is there too: the official file wins.
    save_pretrained(build_sam("mini"), tmp_path / "bundled" / "efficientvit-sam-mini")
    monkeypatch.setattr(weights, "bundled_root", lambda: tmp_path / "bundled")
    model, info = resolve_model(None)
    assert info.kind == "hf_cache" and _same(model, trained)


def test_cache_is_never_downloaded_into_without_allow_download(no_weights, tiny_is_official,
                                                               monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded without allow_download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    with pytest.raises(UserError, match=f"tried: {TINY_FILE} in the Hugging Face cache"):
        resolve_model("tiny")


# --- 3. bundled models ---------------------------------------------------------------------------

def test_bundled_model(tmp_path, trained, no_weights, monkeypatch):
    root = tmp_path / "bundled"
    assert bundled_dir("tiny") is None  # the fixture's root is empty
    save_pretrained(trained, root / TINY)
    monkeypatch.setattr(weights, "bundled_root", lambda: root)
    assert bundled_dir("tiny") == root / TINY
    model, info = resolve_model("tiny")
    assert _same(model, trained)
    assert (info.kind, info.path, info.file) == ("bundled", root / TINY,
                                                 root / TINY / "model.safetensors")
    assert info.description == f"weights: {TINY}, {BUNDLED_NOTE}"
    assert "bundled model trained on synthetic scenes" in info.description
    assert "trained on synthetic scenes by this package; not the official weights" in \
        info.description


def test_bundled_folder_of_the_wrong_model_is_refused(tmp_path, trained, no_weights,
                                                      monkeypatch):
    save_pretrained(trained, tmp_path / "bundled" / "efficientvit-sam-mini")
    monkeypatch.setattr(weights, "bundled_root", lambda: tmp_path / "bundled")
    with pytest.raises(CheckpointError, match=f"holds {TINY}, not efficientvit-sam-mini"):
        resolve_model("mini")


def test_the_package_looks_in_its_own_folder():
    from pathlib import Path

    import effvit_sam

    assert weights.bundled_root() == Path(effvit_sam.__file__).parent / "bundled"


def test_segment_without_model_uses_the_bundled_one_and_says_so(tmp_path, no_weights,
                                                                monkeypatch, capsys):
    from PIL import Image

    root = tmp_path / "bundled"
    torch.manual_seed(3)
    mini = build_sam("mini")
    save_pretrained(mini, root / "efficientvit-sam-mini")
    monkeypatch.setattr(weights, "bundled_root", lambda: root)
    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    js = tmp_path / "m.json"
    assert cli.main(["segment", str(image), "--point", "20,20", "--output",
                     str(tmp_path / "o.png"), "--json", str(js), "--no-fast"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("weights:")]
    assert lines == [f"weights: efficientvit-sam-mini, {BUNDLED_NOTE}"]
    doc = json.loads(js.read_text())
    assert doc["model"] == "efficientvit-sam-mini" and doc["weights"]["kind"] == "bundled"


# --- 4. random weights, only when asked; the refusal ------------------------------------------

def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, info = resolve_model("tiny", random_weights=True, seed=5)
    after = torch.rand(3)
    assert torch.equal(before, after)  # the caller's RNG stream did not move
    b, _ = resolve_model("tiny", random_weights=True, seed=5)
    c, _ = resolve_model("tiny", random_weights=True, seed=6)
    assert _same(a, b) and not _same(a, c)
    assert (info.kind, info.path, info.file, info.seed) == ("random", None, None, 5)
    assert info.description == ("weights: random (--random-weights, seed 5; masks are "
                                "meaningless)")
    assert resolve_model(None, random_weights=True)[1].model == "efficientvit-sam-l0"


def test_nothing_found_refuses_listing_what_was_tried(tmp_path, no_weights):
    with pytest.raises(UserError) as info:
        resolve_model(None)
    msg = str(info.value)
    assert msg.startswith("no weights for efficientvit-sam-l0; tried: efficientvit_sam_l0.pt in "
                          f"the Hugging Face cache {tmp_path / 'empty-cache'}; a bundled model at "
                          f"{tmp_path / 'empty-bundled' / 'efficientvit-sam-mini'}.")
    assert "--checkpoint PATH" in msg and "--random-weights" in msg
    assert f"huggingface-cli download {HUB_REPO_ID} efficientvit_sam_l0.pt" in msg
    assert "\n" not in msg  # one line on the command line


def test_tools_that_only_time_may_fall_back_to_random_weights(no_weights):
    model, info = resolve_model("tiny", require_weights=False, seed=0)
    assert info.kind == "random" and info.seed == 0
    assert info.description.startswith("weights: random (no weights found, seed 0")
    torch.manual_seed(0)
    assert _same(model, build_sam(TINY))


def test_unknown_model_and_devices():
    with pytest.raises(UserError, match="unknown model 'l7' \\(--model\\); valid names: "
                                        "efficientvit-sam-l0, "):
        resolve_model("l7", random_weights=True)
    with pytest.raises(UserError, match="--device 'gpu' is not a torch device"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None) is None
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: no CUDA device is available"):
            resolve_device("cuda")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(UserError, match=f"only {n} CUDA device"):
            resolve_device(f"cuda:{n}")


def test_info_to_dict_is_json(tmp_path, trained):
    path = tmp_path / "t.pt"
    torch.save(trained.state_dict(), path)
    record = resolve_model(TINY, checkpoint=path)[1].to_dict()
    assert json.loads(json.dumps(record)) == {
        "kind": "checkpoint", "path": str(path), "file": str(path), "model": TINY,
        "description": f"weights: {path} (checkpoint, {TINY})", "seed": None}


def test_weights_file_of_a_folder_keeps_the_folders_input_size(tmp_path, trained):
    cfg = trained.config
    wide = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, input_size=384))
    model = build_sam(wide)
    model.load_state_dict(trained.state_dict())
    folder = save_pretrained(model, tmp_path / "run")
    loaded, info = resolve_model(TINY, checkpoint=folder / "model.safetensors")
    assert loaded.encoder_size == 384 and _same(loaded, trained)
    assert info.description.endswith(f"(checkpoint, {TINY}, its folder's config.json)")
    # a folder of the registry's own config: the file is loaded as any weights file
    plain = save_pretrained(trained, tmp_path / "plain")
    loaded, info = resolve_model(TINY, checkpoint=plain / "model.safetensors")
    assert loaded.encoder_size == trained.encoder_size
    assert info.description == f"weights: {plain / 'model.safetensors'} (checkpoint, {TINY})"
