"""The demo's handlers without a browser: encode once per image, decode per click, export."""

from __future__ import annotations

import gc
import io
import json

import numpy as np
import pytest
from PIL import Image

from demo.prompts import Box, Point, PromptHistory
from demo.session import DemoBackend, DemoSession, SessionTracker, close_session
from effvit_sam import build_sam
from effvit_sam.masks import rle_to_mask
from effvit_sam.predictor import EfficientViTSamPredictor


@pytest.fixture(scope="module")
def backend():
    # One model for the whole file: building it is most of the cost on a busy CPU.
    model = build_sam("efficientvit-sam-tiny").eval()
    return DemoBackend(model=model, model_name="efficientvit-sam-tiny",
                       weights="random weights", random_weights=True, points_per_side=4)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)


@pytest.fixture
def encoder_calls(backend):
    calls = [0]
    hook = backend.inference_model.image_encoder.register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1))
    yield calls
    hook.remove()


def reference(model, image, **prompts):
    predictor = EfficientViTSamPredictor(model)
    predictor.set_image(image)
    return predictor.predict(**prompts)


def test_embedding_is_computed_once_per_image(backend, image, encoder_calls):
    calls = encoder_calls
    session = backend.new_session(image)
    assert calls[0] == 1
    # the measured encoder time is what the page's status line shows
    assert f"**encoder** {session.encode_ms:.1f} ms" in backend.status(session)
    for x, y in ((10, 10), (50, 40), (100, 80)):
        backend.click(session, x, y, mode="point", background=False, multimask=True)
    backend.undo(session, multimask=False)
    backend.click(session, 5, 5, mode="box", background=False, multimask=True)
    backend.click(session, 60, 70, mode="box", background=False, multimask=True)
    assert calls[0] == 1  # clicks cost decoder time only
    backend.new_session(image, previous=session)
    assert calls[0] == 2


def test_sessions_share_one_inference_model(backend, image):
    """An upload must not copy the model: every session decodes with the backend's one
    fast-path model, so memory per session is its image and embedding only."""
    first, second = backend.new_session(image), backend.new_session(image)
    assert first.predictor.model is backend.inference_model
    assert second.predictor.model is backend.inference_model
    assert backend.inference_model is not backend.model  # the user's model stays untouched


def test_point_clicks_decode_like_the_predictor(backend, image):
    session = backend.new_session(image)
    backend.click(session, 30, 20, mode="point", background=False, multimask=True)
    backend.click(session, 90, 60, mode="point", background=True, multimask=True)
    assert session.history.current.points == (Point(30, 20, 1), Point(90, 60, 0))
    masks, scores, _ = reference(backend.model, image, points=np.array([[30, 20], [90, 60]]),
                                 labels=np.array([1, 0]), multimask_output=True)
    np.testing.assert_array_equal(session.masks, masks)
    np.testing.assert_allclose(session.scores, scores, rtol=0, atol=1e-6)
    assert session.masks.shape == (3, 90, 120) and session.selected == int(np.argmax(scores))
    assert f"**decoder** {session.decode_ms:.1f} ms" in backend.status(session)
    shown = backend.shown_masks(session)
    np.testing.assert_array_equal(shown, masks[session.selected][None])
    assert [i for _, i in backend.mask_choices(session)] == [0, 1, 2]


def test_box_mode_and_single_mask(backend, image):
    session = backend.new_session(image)
    backend.click(session, 100, 70, mode="box", background=False, multimask=False)
    assert session.masks is None and "opposite corner" in backend.status(session)
    backend.click(session, 20, 10, mode="box", background=False, multimask=False)
    assert session.history.current.box == Box(20, 10, 100, 70)
    masks, _, _ = reference(backend.model, image, boxes=np.array([20, 10, 100, 70]),
                            multimask_output=False)
    np.testing.assert_array_equal(session.masks, masks)
    assert backend.mask_choices(session) == []  # one mask: nothing to choose


def test_undo_returns_to_the_previous_answer_and_clear_to_the_image(backend, image):
    session = backend.new_session(image)
    backend.click(session, 30, 20, mode="point", background=False, multimask=True)
    first = session.masks.copy()
    backend.click(session, 80, 50, mode="point", background=False, multimask=True)
    backend.undo(session, multimask=True)
    np.testing.assert_array_equal(session.masks, first)
    backend.clear(session)
    assert session.masks is None and session.history.current.is_empty
    np.testing.assert_array_equal(backend.overlay(session), image)
    backend.undo(session, multimask=True)  # the clear itself can be undone
    np.testing.assert_array_equal(session.masks, first)


def test_select_and_bad_input(backend, image):
    session = backend.new_session(image)
    with pytest.raises(ValueError, match="no alternative"):
        backend.select(session, 0)
    backend.click(session, 30, 20, mode="point", background=False, multimask=True)
    backend.select(session, 2)
    np.testing.assert_array_equal(backend.shown_masks(session)[0], session.masks[2])
    with pytest.raises(ValueError, match="out of range"):
        backend.select(session, 3)
    with pytest.raises(ValueError, match="outside"):
        backend.click(session, 120, 10, mode="point", background=False, multimask=True)
    with pytest.raises(ValueError, match="'point' or 'box' mode"):
        backend.click(session, 10, 10, mode="everything", background=False, multimask=True)
    with pytest.raises(TypeError, match="uint8"):
        backend.new_session(image.astype(np.float32))


def test_export_writes_the_shown_mask(backend, image):
    session = backend.new_session(image)
    with pytest.raises(ValueError, match="no mask"):
        backend.export(session)
    backend.click(session, 30, 20, mode="point", background=False, multimask=True)
    backend.select(session, 1)
    png, js = backend.export(session)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.read_bytes()))),
                                  session.masks[1] * 255)
    doc = json.loads(js.read_text())
    assert doc["image_size"] == [90, 120] and doc["model"] == "efficientvit-sam-tiny"
    (rec,) = doc["annotations"]
    np.testing.assert_array_equal(rle_to_mask(rec["segmentation"]), session.masks[1])
    assert rec["score"] == pytest.approx(float(session.scores[1]))
    assert rec["point_coords"] == [[30.0, 20.0]] and rec["point_labels"] == [1]
    folder = png.parent
    close_session(session)  # what gr.State calls when it drops the tab's state
    assert not folder.exists() and session.predictor is None and session.masks is None


def test_a_new_upload_frees_the_previous_session(backend, image):
    old = backend.new_session(image)
    backend.click(old, 30, 20, mode="point", background=False, multimask=True)
    folder = backend.export(old)[0].parent
    new = backend.new_session(image[:40], previous=old)
    assert old.predictor is None and not folder.exists()
    assert new.image.shape == (40, 120, 3) and new.masks is None


def test_status_names_model_weights_and_times(backend, image):
    assert backend.status(None) == "**model** efficientvit-sam-tiny (random weights)"
    session = backend.new_session(image)
    backend.click(session, 30, 20, mode="point", background=False, multimask=True)
    status = backend.status(session)
    assert f"**encoder** {session.encode_ms:.1f} ms" in status
    assert f"**decoder** {session.decode_ms:.1f} ms" in status


def test_an_evicted_session_leaves_no_files(backend, image):
    # Gradio drops sessions beyond state_session_capacity without calling delete_callback.
    session = backend.new_session(image)
    backend.click(session, 30, 20, mode="point", background=False, multimask=True)
    folder = backend.export(session)[0].parent
    assert folder.is_dir()
    del session
    gc.collect()
    assert not folder.exists()


def test_everything_orders_largest_first_and_exports_a_label_image(backend, image, monkeypatch):
    big = np.zeros((90, 120), bool)
    big[10:60, 10:100] = True
    small = np.zeros((90, 120), bool)
    small[20:30, 20:40] = True  # inside big: must be drawn and labelled on top

    class Generator:
        def __init__(self, model, *, points_per_side, device, fast):
            assert points_per_side == 4
            # the backend's shared fast-path model, not optimised (copied) a second time
            assert model is backend.inference_model and fast is False

        def generate(self, img, *, encoded):
            # the session's embedding is reused: "everything" never encodes the image again
            assert encoded is session.predictor.images[0]
            return [{"segmentation": small, "area": 200, "predicted_iou": 0.9},
                    {"segmentation": big, "area": 4500, "predicted_iou": 0.8}]

    monkeypatch.setattr("demo.session.EfficientViTSamAutomaticMaskGenerator", Generator)
    session = backend.new_session(image)
    backend.click(session, 30, 20, mode="point", background=False, multimask=True)
    backend.everything(session)
    assert session.history.current.is_empty and session.everything
    np.testing.assert_array_equal(session.masks, np.stack([big, small]))
    np.testing.assert_allclose(session.scores, [0.8, 0.9])
    assert backend.mask_choices(session) == [] and "**2 masks**" in backend.status(session)
    png, js = backend.export(session)
    labels = np.asarray(Image.open(png))
    assert labels[25, 30] == 2 and labels[50, 50] == 1 and labels[80, 110] == 0
    doc = json.loads(js.read_text())
    assert [a["area"] for a in doc["annotations"]] == [4500, 200]
    with pytest.raises(ValueError, match="no alternative"):
        backend.select(session, 0)


def test_everything_with_the_real_generator(backend, image):
    session = backend.new_session(image)
    calls = []
    encoder = backend.inference_model.image_encoder
    hook = encoder.register_forward_hook(lambda *a: calls.append(1))
    session = backend.everything(session)
    hook.remove()
    assert calls == []  # decoded from the session's embedding
    assert session.masks.shape[1:] == (90, 120) and len(session.masks) == len(session.scores)
    areas = session.masks.sum((1, 2))
    assert (np.diff(areas) <= 0).all()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 10000, 3), np.uint8), "the image is 10000x1 pixels: too thin"),
    (np.zeros((120, 100, 3), np.uint8),
     "the image is 100x120 = 12,000 pixels, more than this demo's limit of 10,000"),
])
def test_a_refused_image_keeps_the_previous_session(backend, image, bad, message, monkeypatch):
    monkeypatch.setattr(backend, "max_pixels", 10_000)
    session = backend.new_session(image[:80, :100])  # 8,000 pixels: under the limit
    with pytest.raises(ValueError, match=message):
        backend.new_session(bad, previous=session)
    assert session.predictor is not None  # the tab still has its image and embedding
    backend.click(session, 30, 20, mode="point", background=False, multimask=True)
    assert session.masks.shape == (3, 80, 100)


def test_read_upload_uses_the_backends_limit_and_encoder(backend, tmp_path):
    from PIL import Image

    path = tmp_path / "thin.png"
    Image.new("RGB", (600, 1)).save(path)  # fine for a 1024 encoder, too thin for tiny's 256
    with pytest.raises(ValueError, match=r"thin\.png is 600x1 pixels: too thin .* 256-pixel input"):
        backend.read_upload(path, name="thin.png")
    with pytest.raises(ValueError, match="max_pixels must be positive"):
        DemoBackend(model=backend.model, model_name="t", weights="w", random_weights=True,
                    max_pixels=0)


def test_the_tracker_tells_expired_from_new_and_counts_live_sessions(image):
    def new_session():  # no encoder needed: the tracker only looks at the predictor slot
        return DemoSession(image=image, predictor=object(), history=PromptHistory(),
                           encode_ms=0.0)

    tracker = SessionTracker(remember=2)
    a, b = new_session(), new_session()
    tracker.opened("a", a)
    tracker.opened("b", b)
    tracker.opened(None, a)  # a request without a session hash is not tracked
    assert tracker.uploaded("a") and not tracker.uploaded("new") and tracker.alive() == 2
    close_session(a)  # Gradio's TTL callback
    del b
    gc.collect()  # Gradio's capacity eviction drops the state without a callback
    assert tracker.alive() == 0 and tracker.uploaded("a") and tracker.uploaded("b")
    tracker.forget("a")  # the user removed the image: a new tab again
    assert not tracker.uploaded("a")
    for name in "cde":
        tracker.opened(name, new_session())
    assert [tracker.uploaded(n) for n in "bcde"] == [False, False, True, True]  # remember=2
