"""FFHQ-style alignment math on synthetic landmarks; crops; the optional detector wrapper."""
from __future__ import annotations

import math
import sys
import types

import cv2
import numpy as np
import pytest

from sfeditor.images import alignment as al
from sfeditor.images.alignment import (AlignmentUnavailable, Face, MultipleFaces, NoFaceFound, align_face,
                                align_from_landmarks, center_crop, crop_rect, ffhq_quad, letterbox, prepare_image,
                                quad_transform, transform_points)

cv2.setNumThreads(1)


def template_landmarks(cx=128.0, cy=120.0, s=1.0) -> np.ndarray:
    """68 plausible points of an upright face: jaw, brows, nose, eyes (36-47), mouth (48-67)."""
    lm = np.zeros((68, 2))
    t = np.linspace(-1, 1, 17)
    lm[0:17] = np.stack([cx + 60 * t, cy + 10 + 50 * (1 - np.abs(t))], 1)
    lm[17:22] = np.stack([cx - 45 + 7 * np.arange(5), np.full(5, cy - 35)], 1)
    lm[22:27] = np.stack([cx + 17 + 7 * np.arange(5), np.full(5, cy - 35)], 1)
    lm[27:36] = np.stack([np.full(9, cx) + np.r_[0, 0, 0, 0, -8, -4, 0, 4, 8], cy - 20 + 5 * np.arange(9)], 1)
    ang = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    for k, ex in enumerate((cx - 30, cx + 30)):
        lm[36 + 6 * k:42 + 6 * k] = np.stack([ex + 10 * np.cos(ang), cy - 20 + 4 * np.sin(ang)], 1)
    ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    lm[48:60] = np.stack([cx - 22 * np.cos(ang), cy + 35 + 8 * np.sin(ang)], 1)   # 48 left corner, 54 right
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    lm[60:68] = np.stack([cx - 12 * np.cos(ang), cy + 35 + 3 * np.sin(ang)], 1)
    return (lm - [cx, cy]) * s + [cx, cy]


def similarity(theta_deg: float, scale: float, tx: float, ty: float, center=(128.0, 128.0)) -> np.ndarray:
    th = math.radians(theta_deg)
    c, s = math.cos(th) * scale, math.sin(th) * scale
    cx, cy = center
    return np.array([[c, -s, cx + tx - c * cx + s * cy], [s, c, cy + ty - s * cx - c * cy]])


def synthetic_face(lm: np.ndarray, size: int = 256) -> np.ndarray:
    img = np.full((size, size, 3), 200, np.uint8)
    img[:, :, 2] = np.linspace(100, 220, size).astype(np.uint8)[None, :]
    cv2.ellipse(img, (int(lm[27:36, 0].mean()), int(lm[:, 1].mean())), (70, 90), 0, 0, 360, (220, 180, 150), -1)
    for k, col in ((slice(36, 42), (255, 0, 0)), (slice(42, 48), (0, 200, 0)), (slice(48, 60), (40, 40, 160))):
        c = lm[k].mean(0)
        cv2.circle(img, (int(round(c[0])), int(round(c[1]))), 7, col, -1, lineType=cv2.LINE_AA)
    return img


def test_quad_of_an_upright_face():
    lm = template_landmarks()
    quad, qsize = ffhq_quad(lm)
    eye_to_eye = 60.0                                   # eye centres 60 px apart
    assert qsize == pytest.approx(2 * max(2 * eye_to_eye, 1.8 * 55.0))
    # upright: axis-aligned square, upper-left / lower-left / lower-right / upper-right
    assert quad[0, 0] == pytest.approx(quad[1, 0]) and quad[0, 1] == pytest.approx(quad[3, 1])
    assert quad[0, 1] < quad[1, 1] and quad[0, 0] < quad[3, 0]
    centre = quad.mean(0)
    eye_avg, mouth = lm[36:48].mean(0), (lm[48] + lm[54]) / 2
    assert centre == pytest.approx(eye_avg + 0.1 * (mouth - eye_avg))


@pytest.mark.parametrize("theta,scale,tx,ty", [(25, 1.3, 10, -5), (-40, 0.6, -20, 15), (180, 1.0, 0, 0)])
def test_quad_is_similarity_equivariant_and_undone(theta, scale, tx, ty):
    lm = template_landmarks()
    T = similarity(theta, scale, tx, ty)
    lm_t = transform_points(T, lm)
    quad, qsize = ffhq_quad(lm)
    quad_t, qsize_t = ffhq_quad(lm_t)
    assert np.allclose(quad_t, transform_points(T, quad), atol=1e-6)
    assert qsize_t == pytest.approx(qsize * scale)
    # the alignment transform sends the moved face's landmarks to the same output places
    for size in (64, 1024):
        m0, m1 = quad_transform(quad, size), quad_transform(quad_t, size)
        assert np.allclose(transform_points(m1, lm_t), transform_points(m0, lm), atol=1e-3 * size)


def test_rotated_scaled_photo_aligns_like_the_upright_one():
    lm = template_landmarks()
    img = synthetic_face(lm)
    T = similarity(30, 1.25, 12, -8)
    moved = cv2.warpAffine(img, T, (320, 320), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    a0 = align_from_landmarks(img, lm, 64)
    a1 = align_from_landmarks(moved, transform_points(T, lm), 64)
    assert a0.shape == a1.shape == (64, 64, 3) and a0.dtype == np.uint8
    inner = (slice(16, 48), slice(16, 48))             # away from the padding
    assert np.abs(a0[inner].astype(int) - a1[inner]).mean() < 6
    # the red marker (the picture-left eye) lands where the template says
    pos = transform_points(quad_transform(ffhq_quad(lm)[0], 64), lm[36:42].mean(0)[None])[0]
    y, x = int(round(pos[1])), int(round(pos[0]))
    assert a1[y, x, 0] > 180 and a1[y, x, 1] < 90


def test_face_at_the_edge_is_padded_not_cropped_short():
    lm = template_landmarks(cx=40, cy=60)               # quad leaves the picture on the left / top
    img = synthetic_face(lm, 256)
    out = align_from_landmarks(img, lm, 48)
    assert out.shape == (48, 48, 3)
    assert np.isfinite(out.astype(float)).all() and out.std() > 1


def test_landmark_validation():
    with pytest.raises(ValueError):
        ffhq_quad(np.zeros((5, 2)))
    with pytest.raises(ValueError):
        ffhq_quad(np.full((68, 2), np.nan))


def test_center_crop_and_manual_crop():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255
    out = center_crop(img, 20)
    assert out.shape == (20, 20, 3) and out.min() == 255
    img = np.zeros((100, 100, 3), np.uint8)
    img[30:50, 60:80] = (255, 0, 0)
    out = crop_rect(img, (60, 30, 20, 20), 16)
    assert out.shape == (16, 16, 3) and out[..., 0].min() > 200 and out[..., 1].max() < 40
    with pytest.raises(ValueError):
        crop_rect(img, (500, 500, 10, 10), 16)


def test_letterbox_frames_cars_like_lsun():
    """LSUN cars 512: a 4:3 picture between black bars (64 rows each); wider or taller photos are cropped to 4:3."""
    photo = np.full((384, 512, 3), 200, np.uint8)
    out = letterbox(photo, 512)
    assert out.shape == (512, 512, 3) and out[:64].max() == 0 and out[-64:].max() == 0 and out[64:448].min() == 200
    wide = np.zeros((300, 800, 3), np.uint8)
    wide[:, 200:600] = 255                                   # the centred 4:3 part
    out = letterbox(wide, 64)
    assert out[8:56].min() == 255 and out[:8].max() == 0 and out[56:].max() == 0
    tall = np.zeros((800, 300, 3), np.uint8)
    tall[287:512] = 255                                      # the centred 4:3 part (225 rows)
    assert letterbox(tall, 64)[8:56].min() > 250
    p = prepare_image(photo, 512, "car")
    assert p.method == "letterbox" and np.array_equal(p.image, letterbox(photo, 512))
    assert prepare_image(np.zeros((512, 512, 3), np.uint8), 512, "car").method == "as-is"   # already framed
    assert prepare_image(photo, 512, "church").method == "center"


def test_prepare_image_dispatch(monkeypatch):
    sq = np.zeros((64, 64, 3), np.uint8)
    assert prepare_image(sq, 64, "toy-faces").method == "as-is"
    assert prepare_image(np.zeros((128, 128, 3), np.uint8), 64, "toy-faces", aligned=True).method == "resize"
    p = prepare_image(np.zeros((64, 100, 3), np.uint8), 64, "toy-cars")
    assert p.method == "center" and p.image.shape == (64, 64, 3)
    assert prepare_image(np.zeros((64, 100, 3), np.uint8), 32, None, rect=(0, 0, 50, 50)).method == "crop"
    lm = template_landmarks()
    p = prepare_image(synthetic_face(lm), 32, "ffhq", landmarks=lm)
    assert p.method == "ffhq" and p.image.shape == (32, 32, 3)
    monkeypatch.setitem(sys.modules, "dlib", None)      # import dlib -> ImportError
    monkeypatch.setattr(al, "_DEFAULT_DETECTOR", None)
    with pytest.raises(AlignmentUnavailable, match=r'pip install "sfeditor\[align\]"'):
        prepare_image(np.zeros((100, 120, 3), np.uint8), 64, "ffhq")
    with pytest.raises(ImportError):                     # also catchable as an ImportError
        al.LandmarkDetector()
    with pytest.raises(al.AlignmentError, match="square"):
        prepare_image(np.zeros((64, 100, 3), np.uint8), 64, method="none")


class _Rect:
    def __init__(self, l, t, r, b):
        self._v = (l, t, r, b)

    def left(self):
        return self._v[0]

    def top(self):
        return self._v[1]

    def right(self):
        return self._v[2]

    def bottom(self):
        return self._v[3]


def _fake_dlib(rects):
    lm = template_landmarks()

    class Shape:
        num_parts = 68

        def __init__(self, off):
            self.off = off

        def part(self, i):
            return types.SimpleNamespace(x=lm[i, 0] + self.off, y=lm[i, 1])

    class Detector:
        def run(self, img, up, thr):
            return rects, [1.0] * len(rects), [0] * len(rects)

    mod = types.ModuleType("dlib")
    mod.get_frontal_face_detector = lambda: Detector()
    mod.shape_predictor = lambda path: (lambda img, r: Shape(r.left() - 68))
    return mod


def test_detector_wrapper_and_choices(monkeypatch):
    img = synthetic_face(template_landmarks())
    monkeypatch.setitem(sys.modules, "dlib", _fake_dlib([_Rect(68, 60, 188, 180), _Rect(0, 0, 30, 30)]))
    det = al.LandmarkDetector(predictor_path="unused.dat")
    faces = det.detect(img)
    assert len(faces) == 2 and faces[0].area > faces[1].area and faces[0].landmarks.shape == (68, 2)
    out = align_face(img, 32, detector=det)
    assert out.method == "ffhq" and out.image.shape == (32, 32, 3) and out.notes
    with pytest.raises(MultipleFaces) as e:
        align_face(img, 32, detector=det, choose="single")
    assert len(e.value.faces) == 2
    assert align_face(img, 32, faces=e.value.faces, face_index=0).face is e.value.faces[0]
    monkeypatch.setitem(sys.modules, "dlib", _fake_dlib([]))
    with pytest.raises(NoFaceFound, match="crop it by hand"):
        align_face(img, 32, detector=al.LandmarkDetector(predictor_path="unused.dat"))
    assert isinstance(Face((0, 0, 2, 3), np.zeros((68, 2))).area, float)
