"""The made microscopy set of the fine-tuning example: ground truth that matches the label
images, determinism per seed, the look it promises (bright touching cells on a dark field), and
the round trip through ``make-shards --from-masks``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from distill.convert import convert_mask_folder
from distill.microscopy import MIN_VISIBLE_AREA, microscopy_for, write_microscopy_folder
from effvit_sam.cli import main as cli_main
from effvit_sam.masks import rle_to_mask


def test_same_seed_same_image_and_each_image_stands_alone() -> None:
    a, b = microscopy_for(3, 1, size=96), microscopy_for(3, 1, size=96)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, microscopy_for(4, 1, size=96).image)
    assert not np.array_equal(a.image, microscopy_for(3, 2, size=96).image)


def test_labels_are_the_visible_cells_numbered_one_to_k() -> None:
    touching = 0
    for index in range(4):
        drawn = microscopy_for(0, index, size=128)
        assert drawn.image.shape == drawn.labels.shape == (128, 128)
        assert drawn.image.dtype == drawn.labels.dtype == np.uint8
        values, counts = np.unique(drawn.labels, return_counts=True)
        assert list(values) == list(range(drawn.num_cells + 1))  # 0 = background, then 1..K
        assert drawn.num_cells >= 3
        assert counts[1:].min() >= MIN_VISIBLE_AREA
        # bright cells on a dark field
        inside = drawn.image[drawn.labels > 0].mean()
        assert inside > drawn.image[drawn.labels == 0].mean() + 40
        # neighbouring pixels of two different cells: cells touch or overlap
        h = (drawn.labels[:, 1:] != drawn.labels[:, :-1]) & (drawn.labels[:, 1:] > 0) & \
            (drawn.labels[:, :-1] > 0)
        touching += int(h.sum())
    assert touching > 0


def test_folder_round_trips_through_make_shards_from_masks(tmp_path) -> None:
    root, cells = write_microscopy_folder(tmp_path / "set", num_images=4, size=96, seed=5)
    names = sorted(p.name for p in (root / "images").iterdir())
    assert names == sorted(p.name for p in (root / "masks").iterdir()) == \
        [f"cell_{i:04d}.png" for i in range(4)]
    labels = {}
    for i, name in enumerate(names):
        drawn = microscopy_for(5, i, size=96)
        image = np.asarray(Image.open(root / "images" / name))
        labels[name] = np.asarray(Image.open(root / "masks" / name))
        assert np.array_equal(image, drawn.image)
        assert np.array_equal(labels[name], drawn.labels)
    assert cells == sum(int(v.max()) for v in labels.values())

    report = convert_mask_folder(root, tmp_path / "shards", val_fraction=0.5, seed=0)
    val = json.loads(report.val_annotations.read_text())
    assert report.masks + len(val["annotations"]) == cells
    files = {img["id"]: img["file_name"] for img in val["images"]}
    for ann in val["annotations"]:
        label_image = labels[files[ann["image_id"]]]
        mask = rle_to_mask(ann["segmentation"])
        value = np.unique(label_image[mask])
        assert len(value) == 1 and value[0] > 0
        assert np.array_equal(mask, label_image == value[0])


def test_command_writes_the_folder_and_refuses_bad_arguments(tmp_path, capsys) -> None:
    out = tmp_path / "set"
    assert cli_main(["make-microscopy", "--out", str(out), "--num-images", "2",
                     "--image-size", "64"]) == 0
    assert len(list((out / "masks").iterdir())) == 2
    for args, message in ((["--out", str(out), "--num-images", "2"], "is not empty"),
                          (["--out", str(tmp_path / "b"), "--num-images", "0"],
                           "--num-images must be >= 1"),
                          (["--out", str(tmp_path / "c"), "--num-images", "1",
                            "--image-size", "32"], "--image-size must be at least 64")):
        capsys.readouterr()
        assert cli_main(["make-microscopy", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("effvit-sam make-microscopy: error: ")
        assert message in err[0]


@pytest.mark.parametrize("size", [63, 10])
def test_too_small_images_are_refused(size) -> None:
    with pytest.raises(ValueError, match="at least 64"):
        microscopy_for(0, 0, size=size)
