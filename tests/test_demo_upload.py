"""Uploaded files to images: what the demo accepts, and the message for everything it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from demo.upload import DEFAULT_MAX_PIXELS, check_image_size, read_upload

from .demo_files import image_modes, malformed_uploads, png_header_only


@pytest.mark.parametrize("case", ["text file", "empty file", "truncated PNG", "1x10000",
                                  "20000x20000", "6000x5000"])
def test_malformed_uploads_are_refused_with_a_message_naming_the_file(tmp_path, case):
    path, message = malformed_uploads(tmp_path)[case]
    with pytest.raises(ValueError, match=message):
        read_upload(path, name=path.name, encoder_size=256)


def test_the_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    # The header-only file would fail as "truncated" if anything decoded it; and nothing may:
    # the refusal comes from the header alone.
    path = png_header_only(tmp_path / "big.png", 400, 300)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a refused image"))
    with pytest.raises(ValueError, match=r"400x300 = 120,000 pixels, more than this demo's "
                                         r"limit of 100,000"):
        read_upload(path, name="big.png", max_pixels=100_000)


def test_an_image_at_the_limit_is_accepted(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (400, 250), (1, 2, 3)).save(path)
    image = read_upload(path, name="ok.png", max_pixels=100_000)
    assert image.shape == (250, 400, 3) and image.dtype == np.uint8
    assert (image == (1, 2, 3)).all()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    path, expected = image_modes(tmp_path)[mode]
    assert Image.open(path).mode == mode  # the file really is in that mode
    image = read_upload(path, name=path.name)
    assert image.dtype == np.uint8 and image.flags.c_contiguous
    np.testing.assert_array_equal(image, expected)


def test_sixteen_bit_keeps_its_range(tmp_path):
    # PIL's own convert("RGB") would turn everything above 255 white; the demo scales instead.
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=np.uint16)).save(path)
    assert read_upload(path, name="deep.png")[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    # A 40x20 landscape photo tagged "rotate 90 degrees" (orientation 6) shows as 20x40 portrait.
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[274] = 6
    Image.new("RGB", (40, 20), (250, 250, 250)).save(path, exif=exif)
    assert read_upload(path, name="phone.jpg").shape == (40, 20, 3)


def test_thin_but_segmentable_images_pass():
    check_image_size(1, 300, max_pixels=DEFAULT_MAX_PIXELS, encoder_size=256)  # 300:1 <= 512:1
    check_image_size(1, 512, max_pixels=DEFAULT_MAX_PIXELS, encoder_size=256)
    with pytest.raises(ValueError, match="at most 512 times the short side"):
        check_image_size(1, 520, max_pixels=DEFAULT_MAX_PIXELS, encoder_size=256)
    with pytest.raises(ValueError, match="empty"):
        check_image_size(0, 10, max_pixels=DEFAULT_MAX_PIXELS, encoder_size=256)
