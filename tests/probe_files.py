"""The bad (and a few good) input files of :mod:`tests.probe_bad_inputs`, made in a folder.

Everything is tiny and made here: ``efficientvit-sam-tiny`` random weights, 64-pixel made
shards (:func:`distill.synthetic_writers.write_sa1b_shards`), a 2-image made COCO set
(:func:`distill.synthetic_writers.write_eval_set`). Names are relative to the folder, which is
the probe's working directory, so messages show them as a user would type them.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _tar_members(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            stem, ext = m.name.rsplit(".", 1)
            out.setdefault(stem, {})[ext] = tar.extractfile(m).read()
    return out


def _write_tar(path: Path, members: dict[str, dict[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for stem, files in members.items():
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{stem}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _images(t: Path) -> None:
    Image.new("RGB", (120, 90), (20, 30, 40)).save(t / "scene.png")
    Image.new("RGB", (600, 1), (20, 30, 40)).save(t / "thin.png")
    Image.new("RGB", (300, 200), (90, 30, 40)).save(t / "big.png")
    Image.new("RGB", (120, 90), (20, 30, 40)).save(t / "scene.tif")
    (t / "dir.png").mkdir()
    (t / "garbage.png").write_bytes(b"this is no picture")
    (t / "empty.png").write_bytes(b"")
    (t / "notes.txt.jpg").write_text("a text file named like a picture\n")
    (t / "bomb.png").write_bytes(_png_claiming(40000, 40000))  # > PIL's bomb limit
    (t / "huge.png").write_bytes(_png_claiming(12000, 12000))  # header only: truncated
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)).save(
        jpg, "JPEG")
    (t / "truncated.jpg").write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 3])


def _weights(t: Path) -> None:
    from effvit_sam import build_sam, save_pretrained

    model = build_sam("efficientvit-sam-tiny")
    state = model.state_dict()
    torch.save(state, t / "tiny.pt")
    key = next(k for k, v in state.items() if v.is_floating_point())
    torch.save({**state, key: torch.full_like(state[key], float("nan"))}, t / "nan.pt")
    torch.save({k: v for k, v in list(state.items())[:-3]}, t / "partial.pt")
    torch.save({"model": {}, "hook": Path("x")}, t / "pickled.pt")  # needs unpickling
    (t / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    (t / "text.pt").write_text("not a torch file\n")
    (t / "folder").mkdir()
    save_pretrained(model, t / "pretrained")
    save_pretrained(model, t / "badcfg")
    (t / "badcfg" / "config.json").write_text('{"name": "efficientvit-sam-tiny",')
    save_pretrained(model, t / "othercfg")  # tiny weights, mini's config.json
    save_pretrained(build_sam("efficientvit-sam-mini"), t / "mini")
    (t / "othercfg" / "config.json").write_text((t / "mini" / "config.json").read_text())
    save_pretrained(model, t / "typocfg")
    meta = json.loads((t / "typocfg" / "config.json").read_text())
    meta["config"]["widht"] = 3
    (t / "typocfg" / "config.json").write_text(json.dumps(meta))
    ckpt = {"model": state, "optimizer": {}, "scheduler": {}, "scaler": None, "step": 1,
            "config": {}, "rng": [{}, {}]}
    torch.save(ckpt, t / "world2.pt")
    nan_model = {**state, key: torch.full_like(state[key], float("nan"))}
    torch.save({**ckpt, "model": nan_model, "rng": [{}]}, t / "nan_ckpt.pt")


def _coco(t: Path) -> None:
    from distill.synthetic_writers import write_eval_set

    ann_path = write_eval_set(t / "coco", num_images=2, seed=0, image_size=64, fmt="coco")
    (t / "coco" / "ann.json").write_text(ann_path.read_text())
    data = json.loads(ann_path.read_text())
    first = data["annotations"][0]
    h, w = first["segmentation"]["size"]

    def variant(name: str, change) -> None:
        copy = json.loads(json.dumps(data))
        change(copy)
        (t / "coco" / name).write_text(json.dumps(copy))

    def short_rle(d):
        d["annotations"][0]["segmentation"] = {"size": [h, w], "counts": "0"}

    def polygon_out(d):
        d["annotations"][0]["segmentation"] = [[1e6, 1e6, 2e6, 1e6, 2e6, 2e6]]

    def polygon_odd(d):
        d["annotations"][0]["segmentation"] = [[1.0, 2.0, 3.0, 4.0, 5.0]]

    def box_off(d):
        d["annotations"][0]["bbox"] = [5000.0, 5000.0, 10.0, 10.0]

    def no_file(d):
        d["images"][0]["file_name"] = "missing.jpg"

    def wrong_size(d):
        d["annotations"][0]["segmentation"] = {**first["segmentation"], "size": [h + 1, w]}

    def no_images(d):
        del d["images"]

    for name, change in (("short_rle.json", short_rle), ("polygon_out.json", polygon_out),
                         ("polygon_odd.json", polygon_odd), ("box_off.json", box_off),
                         ("no_file.json", no_file), ("wrong_size.json", wrong_size),
                         ("no_images.json", no_images)):
        variant(name, change)
    (t / "coco" / "bad_ann.json").write_text("{ nope")
    (t / "coco" / "list_ann.json").write_text("[1, 2, 3]")
    good = {"image_id": data["images"][0]["id"], "category_id": first["category_id"],
            "bbox": [1, 2, 10, 12], "score": 0.9}
    dets = {"dets_text.json": "[{'image_id': 1", "dets_dict.json": json.dumps(good),
            "dets_keys.json": json.dumps([good, {"image_id": good["image_id"], "bbox": [1]}]),
            "dets_bbox.json": json.dumps([good, {**good, "bbox": [1, 2]}]),
            "dets_nan.json": json.dumps([good, {**good, "score": float("nan")}]),
            "dets_far.json": json.dumps([{**good, "bbox": [9000, 9000, 5, 5]}])}
    for name, text in dets.items():
        (t / "coco" / name).write_text(text)


def _shards(t: Path) -> None:
    from distill.synthetic_writers import write_sa1b_shards

    good = write_sa1b_shards(t / "shards", num_shards=1, images_per_shard=3, seed=0,
                             image_size=64)[0]
    members = _tar_members(good)
    stems = list(members)
    record = json.loads(members[stems[1]]["json"])
    size = record["annotations"][0]["segmentation"]["size"]
    record["annotations"].insert(0, {**record["annotations"][0], "id": 9001, "area": 50,
                                     "segmentation": {"size": size, "counts": "0"}})
    dirty = {stems[0]: members[stems[0]], "sa_901": {"jpg": b"not a jpeg",
                                                     "json": members[stems[0]]["json"]},
             stems[1]: {**members[stems[1]], "json": json.dumps(record).encode()},
             stems[2]: members[stems[2]]}
    _write_tar(t / "dirty" / "sa_000000.tar", dirty)
    data = Path(good).read_bytes()
    (t / "cut").mkdir()
    (t / "cut" / "sa_000000.tar").write_bytes(data[: int(len(data) * 0.6)])
    (t / "junk").mkdir()
    (t / "junk" / "sa_000000.tar").write_bytes(b"this is not a tar file" * 40)
    all_bad = {}
    for stem, files in members.items():
        rec = json.loads(files["json"])
        for ann in rec["annotations"]:
            ann["segmentation"]["counts"] = "0"
        all_bad[stem] = {**files, "json": json.dumps(rec).encode()}
    _write_tar(t / "allbad" / "sa_000000.tar", all_bad)


def _runs(t: Path) -> None:
    (t / "occupied").mkdir()
    (t / "occupied" / "metrics.csv").write_text("step\n1\n")
    (t / "a_file").write_text("not a folder\n")
    (t / "bad.yaml").write_text("phase: 1\ntrain:\n  lr: [1e-4\n  steps: 3\n")
    (t / "unknown_key.yaml").write_text("phase: 2\nmodel:\n  name: efficientvit-sam-tiny\n"
                                        "trian:\n  steps: 3\n")
    (t / "list.yaml").write_text("- 1\n- 2\n")
    (t / "tiled_state.json").write_text("{ not json")


def make_files(t: Path) -> Path:
    """Write every probe input under ``t`` (created); returns ``t``."""
    t.mkdir(parents=True, exist_ok=True)
    (t / "empty-cache").mkdir(exist_ok=True)
    for make in (_images, _weights, _coco, _shards, _runs):
        make(t)
    return t
