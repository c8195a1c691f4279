"""Bring a photo into the frame a generator was trained on.

Face domains (FFHQ and generators trained like it) use the FFHQ recipe: 68
facial landmarks -> an oriented square ("quad") from the eye centres and the
mouth corners -> shrink, crop, reflect-pad (blurred towards the median
colour) and warp the quad onto the output square.  :func:`ffhq_quad` and
:func:`align_from_landmarks` are pure functions (NumPy + OpenCV).

Landmarks come from dlib's 68-point predictor, an optional extra::

    pip install "sfeditor[align]"        # = dlib-bin face_recognition_models

:class:`LandmarkDetector` raises :class:`AlignmentUnavailable` (with that
command) when dlib is missing.  :func:`align_face` reports "no face"
(:class:`NoFaceFound`) and "several faces" (:class:`MultipleFaces`, carrying
every face found) so that a caller can choose one (``choose="largest"`` or
``face_index=``) or fall back to a manual rectangle (:func:`crop_rect`).

LSUN cars (the official 512 px car generator) were trained letterboxed: a
4:3 picture (512 x 384) between black bars, so a car photo is cropped to 4:3
and letterboxed the same way (:func:`letterbox`).  Other domains (churches,
the toy domains, which render already aligned pictures) use a centre crop +
resize (:func:`center_crop`).  A square picture of exactly the generator's
size is taken as it is.  :func:`prepare_image` picks the method.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["AlignmentError", "AlignmentUnavailable", "NoFaceFound", "MultipleFaces", "Face", "Prepared",
           "ffhq_quad", "quad_transform", "align_from_landmarks", "transform_points", "center_crop",
           "letterbox", "crop_rect", "resize_square", "LandmarkDetector", "detect_faces", "align_face", "prepare_image",
           "FACE_DOMAINS", "LETTERBOX_DOMAINS", "ALIGN_INSTALL_HINT"]

ALIGN_INSTALL_HINT = 'pip install "sfeditor[align]"   (or: pip install dlib-bin face_recognition_models)'

#: domains whose photos get FFHQ alignment (the toy faces render already-aligned portraits)
FACE_DOMAINS = frozenset({"ffhq", "faces", "face", "celeba", "celebahq"})
#: domains trained letterboxed -> width / height of the picture inside the square frame (LSUN cars: 512 x 384)
LETTERBOX_DOMAINS = {"car": 4 / 3, "cars": 4 / 3, "lsun-car": 4 / 3, "lsun-cars": 4 / 3}


class AlignmentError(ValueError):
    """Alignment could not produce a picture (the message says what to do)."""


class AlignmentUnavailable(AlignmentError, ImportError):
    """Face alignment needs the optional ``[align]`` extra."""


class NoFaceFound(AlignmentError):
    """The detector found no face; crop the picture by hand (``crop_rect``) or use a centre crop."""


class MultipleFaces(AlignmentError):
    """Several faces were found; ``.faces`` lists them (largest first) for the caller to pick."""

    def __init__(self, message: str, faces: list["Face"]):
        super().__init__(message)
        self.faces = faces


@dataclass
class Face:
    """One detected face: box ``(x0, y0, x1, y1)`` in pixels, 68 landmarks ``[68, 2]`` (x, y)."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float = 0.0

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return float(max(0.0, x1 - x0) * max(0.0, y1 - y0))


@dataclass
class Prepared:
    """A picture ready for inversion: ``image`` uint8 RGB ``[size, size, 3]``, how it was made."""

    image: np.ndarray
    method: str                  # "as-is", "resize", "center", "crop", "ffhq"
    face: Face | None = None
    quad: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


# -------------------------------------------------------------- FFHQ math
def _landmarks(lm) -> np.ndarray:
    lm = np.asarray(lm, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks as a [68, 2] array, got shape {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks must be finite")
    return lm


def ffhq_quad(landmarks) -> tuple[np.ndarray, float]:
    """The FFHQ crop square from 68 landmarks (x, y in pixels).

    Returns ``(quad, qsize)``: ``quad`` [4, 2] holds the corners upper-left,
    lower-left, lower-right, upper-right of the output picture in input
    coordinates; ``qsize`` is its side length.  The square is centred a
    little below the eyes (10% of the eye-to-mouth vector), oriented along
    the eye line corrected by the eye-to-mouth direction, and sized by
    ``max(2 x eye distance, 1.8 x eye-to-mouth distance)`` for its half-side.
    """
    lm = _landmarks(landmarks)
    eye_l = lm[36:42].mean(0)          # the eye on the picture's left
    eye_r = lm[42:48].mean(0)
    eye_avg = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    mouth_avg = (lm[48] + lm[54]) / 2  # outer mouth corners
    eye_to_mouth = mouth_avg - eye_avg
    # horizontal axis: the eye line, averaged with the eye-to-mouth vector turned by -90 degrees
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = math.hypot(*x)
    if norm < 1e-9:
        raise AlignmentError("degenerate landmarks (eyes and mouth coincide)")
    x = x / norm * max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])        # x turned by +90 degrees (image y points down)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(math.hypot(*x) * 2)


def quad_transform(quad, size: int) -> np.ndarray:
    """2x3 affine matrix taking input pixel coordinates to output pixel coordinates.

    The quad's upper-left / lower-left / upper-right corners go to the outer
    corners of the ``size`` x ``size`` output (pixel centres at integers, so
    the corners are at -0.5 and size - 0.5).
    """
    import cv2

    q = np.asarray(quad, dtype=np.float32)
    lo, hi = -0.5, size - 0.5
    dst = np.array([[lo, lo], [lo, hi], [hi, lo]], dtype=np.float32)
    return cv2.getAffineTransform(np.stack([q[0], q[1], q[3]]), dst).astype(np.float64)


def transform_points(matrix, points) -> np.ndarray:
    """Apply a 2x3 affine matrix to ``[N, 2]`` points."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def _as_rgb(img) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {a.dtype} {a.shape}")
    return a


def align_from_landmarks(img, landmarks, output_size: int = 1024, enable_padding: bool = True,
                         return_quad: bool = False):
    """FFHQ-style aligned crop ``[output_size, output_size, 3]`` of ``img`` (uint8 RGB).

    Steps (as in the FFHQ dataset tools): shrink by an integer factor when
    the quad is more than twice the output size; crop to the quad plus a
    border; where the quad leaves the picture, reflect-pad it and blend the
    padding towards a blurred copy and the median colour (no hard mirror
    seams); warp the quad onto the output square (anti-aliased).
    """
    import cv2

    img = _as_rgb(img)
    if output_size < 1:
        raise ValueError("output_size must be positive")
    quad, qsize = ffhq_quad(landmarks)
    quad0 = quad.copy()
    work = img

    shrink = int(math.floor(qsize / output_size * 0.5))
    if shrink > 1:
        h, w = work.shape[:2]
        new = (max(1, int(round(w / shrink))), max(1, int(round(h / shrink))))
        work = cv2.resize(work, new, interpolation=cv2.INTER_AREA)
        quad = quad / shrink
        qsize = qsize / shrink

    border = max(int(round(qsize * 0.1)), 3)
    h, w = work.shape[:2]
    x0, y0 = int(math.floor(quad[:, 0].min())), int(math.floor(quad[:, 1].min()))
    x1, y1 = int(math.ceil(quad[:, 0].max())), int(math.ceil(quad[:, 1].max()))
    cx0, cy0 = max(x0 - border, 0), max(y0 - border, 0)
    cx1, cy1 = min(x1 + border, w), min(y1 + border, h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise AlignmentError("the face lies outside the picture")
    if (cx1 - cx0) < w or (cy1 - cy0) < h:
        work = work[cy0:cy1, cx0:cx1]
        quad = quad - [cx0, cy0]
        x0, x1, y0, y1 = x0 - cx0, x1 - cx0, y0 - cy0, y1 - cy0

    h, w = work.shape[:2]
    pad = [max(-x0 + border, 0), max(-y0 + border, 0), max(x1 - w + border, 0), max(y1 - h + border, 0)]
    border_mode = cv2.BORDER_REFLECT
    if enable_padding and max(pad) > border - 4:
        p = max(int(round(qsize * 0.3)), 1)
        pad = [max(v, p) for v in pad]
        work = _soft_pad(work, pad, qsize)
        quad = quad + [pad[0], pad[1]]
    elif not enable_padding:
        border_mode = cv2.BORDER_CONSTANT

    # warp to an intermediate size (at most 4x the output), then area-downsample: anti-aliased
    side = math.hypot(*(quad[3] - quad[0]))
    k = int(min(4, max(1, math.ceil(side / output_size))))
    m = quad_transform(quad, output_size * k)
    out = cv2.warpAffine(work, m, (output_size * k, output_size * k), flags=cv2.INTER_CUBIC,
                         borderMode=border_mode, borderValue=(0, 0, 0))
    if k > 1:
        out = cv2.resize(out, (output_size, output_size), interpolation=cv2.INTER_AREA)
    out = np.ascontiguousarray(out)
    return (out, quad0) if return_quad else out


def _soft_pad(img: np.ndarray, pad: Sequence[int], qsize: float) -> np.ndarray:
    """Reflect-pad (left, top, right, bottom) and fade the padding to blur and the median colour."""
    import cv2

    left, top, right, bottom = (int(v) for v in pad)
    f = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_REFLECT_101 if min(img.shape[:2]) > 1
                           else cv2.BORDER_REPLICATE).astype(np.float32)
    h, w = f.shape[:2]
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        fx = np.minimum(xs / max(left, 1e-6) if left else np.inf, (w - 1 - xs) / max(right, 1e-6) if right else np.inf)
        fy = np.minimum(ys / max(top, 1e-6) if top else np.inf, (h - 1 - ys) / max(bottom, 1e-6) if bottom else np.inf)
    # > 0 in the padding (1 at the outer edge), negative inside the picture
    mask = np.broadcast_to(np.maximum(1.0 - fx, 1.0 - fy), (h, w))[:, :, None].astype(np.float32)
    sigma = max(qsize * 0.02, 0.5)
    blurred = cv2.GaussianBlur(f, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    f = f + (blurred - f) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)   # blur fades in just inside the edge
    median = np.median(f.reshape(-1, 3), axis=0)
    f = f + (median - f) * np.clip(mask, 0.0, 1.0)
    return np.clip(f + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------- simple crops
def resize_square(img, size: int) -> np.ndarray:
    """Resize a square picture to ``size`` (area filter down, cubic up)."""
    import cv2

    img = _as_rgb(img)
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(img, (size, size), interpolation=interp))


def center_crop(img, size: int) -> np.ndarray:
    """Largest centred square, resized to ``size`` x ``size``."""
    img = _as_rgb(img)
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return resize_square(img[y:y + s, x:x + s], size)


def letterbox(img, size: int, aspect: float = 4 / 3) -> np.ndarray:
    """Largest centred ``aspect`` (width / height) crop, resized to ``size`` wide and centred between black
    bars in a ``size`` x ``size`` frame: how NVIDIA's dataset tool framed LSUN cars for the official 512 px
    generator (512 x 384 between 64-row bars), so a car photo meets the generator where it was trained."""
    import cv2

    img = _as_rgb(img)
    h, w = img.shape[:2]
    ch, cw = (h, min(w, round(h * aspect))) if w / h >= aspect else (min(h, round(w / aspect)), w)
    y, x = (h - ch) // 2, (w - cw) // 2
    inner = max(1, round(size / aspect))
    crop = img[y:y + ch, x:x + cw]
    interp = cv2.INTER_AREA if cw > size else cv2.INTER_CUBIC
    out = np.zeros((size, size, 3), np.uint8)
    top = (size - inner) // 2
    out[top:top + inner] = cv2.resize(crop, (size, inner), interpolation=interp)
    return out


def crop_rect(img, rect: Sequence[float], size: int) -> np.ndarray:
    """A manual crop: ``rect = (x, y, width, height)`` in pixels, enlarged to a square about
    its centre (the picture edge is replicated where the square leaves it), resized to ``size``."""
    import cv2

    img = _as_rgb(img)
    if len(rect) != 4:
        raise ValueError("rect must be (x, y, width, height)")
    x, y, rw, rh = (float(v) for v in rect)
    if not all(math.isfinite(v) for v in (x, y, rw, rh)) or rw <= 0 or rh <= 0:
        raise ValueError(f"invalid crop rectangle {tuple(rect)}")
    h, w = img.shape[:2]
    if x >= w or y >= h or x + rw <= 0 or y + rh <= 0:
        raise ValueError(f"crop rectangle {tuple(rect)} lies outside the {w}x{h} picture")
    s = max(rw, rh)
    cx, cy = x + rw / 2, y + rh / 2
    quad = np.array([[cx - s / 2, cy - s / 2], [cx - s / 2, cy + s / 2], [cx + s / 2, cy + s / 2],
                     [cx + s / 2, cy - s / 2]]) - 0.5     # rect edges are pixel edges
    k = int(min(4, max(1, math.ceil(s / size))))
    out = cv2.warpAffine(img, quad_transform(quad, size * k), (size * k, size * k), flags=cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)
    if k > 1:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out)


# ----------------------------------------------------------- detection
class LandmarkDetector:
    """dlib's HOG face detector + 68-point shape predictor (the FFHQ recipe).

    ``predictor_path`` defaults to the model shipped by ``face_recognition_models``.
    Raises :class:`AlignmentUnavailable` when dlib or the model is missing.
    """

    def __init__(self, predictor_path: str | None = None, upsample: int = 1):
        try:
            import dlib  # type: ignore
        except ImportError:
            raise AlignmentUnavailable("face alignment needs dlib and its 68-point landmark model, which are "
                                       f"not installed: {ALIGN_INSTALL_HINT}") from None
        if predictor_path is None:
            try:
                import face_recognition_models  # type: ignore
            except ImportError:
                raise AlignmentUnavailable("face alignment needs the 68-point landmark model from "
                                           f"face_recognition_models, which is not installed: "
                                           f"{ALIGN_INSTALL_HINT}") from None
            predictor_path = face_recognition_models.pose_predictor_model_location()
        try:
            self._detector = dlib.get_frontal_face_detector()
            self._predictor = dlib.shape_predictor(str(predictor_path))
        except RuntimeError as e:
            raise AlignmentUnavailable(f"could not load the landmark model {predictor_path}: {e}") from None
        self._dlib = dlib
        self.upsample = upsample

    def detect(self, img) -> list[Face]:
        """Every face in a uint8 RGB picture, largest first."""
        img = np.ascontiguousarray(_as_rgb(img))
        try:
            rects, scores, _ = self._detector.run(img, self.upsample, 0.0)
        except (AttributeError, TypeError):
            rects = self._detector(img, self.upsample)
            scores = [0.0] * len(rects)
        faces = []
        for r, sc in zip(rects, scores):
            shape = self._predictor(img, r)
            lm = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
            if lm.shape != (68, 2):
                raise AlignmentError(f"the landmark model gives {lm.shape[0]} points; the FFHQ recipe needs 68")
            faces.append(Face((float(r.left()), float(r.top()), float(r.right()), float(r.bottom())), lm, float(sc)))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces


_DEFAULT_DETECTOR: LandmarkDetector | None = None


def detect_faces(img, detector: LandmarkDetector | None = None) -> list[Face]:
    """Faces in ``img`` (largest first) with a shared default :class:`LandmarkDetector`."""
    global _DEFAULT_DETECTOR
    if detector is None:
        if _DEFAULT_DETECTOR is None:
            _DEFAULT_DETECTOR = LandmarkDetector()
        detector = _DEFAULT_DETECTOR
    return detector.detect(img)


def align_face(img, output_size: int, *, faces: list[Face] | None = None, choose: str = "largest",
               face_index: int | None = None, detector: LandmarkDetector | None = None) -> Prepared:
    """Detect (unless ``faces`` are given) and FFHQ-align one face.

    ``choose="largest"`` takes the largest face when there are several;
    ``choose="single"`` raises :class:`MultipleFaces` instead; ``face_index``
    picks one of the faces (largest first).  No face: :class:`NoFaceFound`.
    """
    if choose not in ("largest", "single"):
        raise ValueError("choose must be 'largest' or 'single'")
    if faces is None:
        faces = detect_faces(img, detector)
    faces = sorted(faces, key=lambda f: f.area, reverse=True)
    if not faces:
        raise NoFaceFound("no face was found in the picture; crop it by hand (a rectangle around the face) "
                          "or use a centre crop")
    notes = []
    if face_index is not None:
        if not 0 <= face_index < len(faces):
            raise ValueError(f"face_index {face_index} out of range: {len(faces)} face(s) found")
        face = faces[face_index]
    elif len(faces) > 1 and choose == "single":
        raise MultipleFaces(f"{len(faces)} faces were found; pick one (face_index, largest first) "
                            "or crop by hand", faces)
    else:
        face = faces[0]
        if len(faces) > 1:
            notes.append(f"{len(faces)} faces found; aligned the largest")
    out, quad = align_from_landmarks(img, face.landmarks, output_size, return_quad=True)
    return Prepared(out, "ffhq", face, quad, notes)


# ------------------------------------------------------------ dispatch
def prepare_image(img, size: int, domain: str | None = None, method: str = "auto", *,
                  rect: Sequence[float] | None = None, landmarks=None, aligned: bool = False,
                  choose: str = "largest", face_index: int | None = None,
                  detector: LandmarkDetector | None = None) -> Prepared:
    """Turn a photo into the generator's ``size`` x ``size`` frame.

    method: ``"auto"`` (a square picture of the right size, or ``aligned=True``,
    is taken as it is; then ``rect`` -> manual crop; ``landmarks`` or a face
    domain -> FFHQ alignment; a letterboxed domain (LSUN cars) -> letterbox;
    anything else -> centre crop), ``"none"`` (the picture is already aligned:
    must be square; resized if needed), ``"center"``, ``"letterbox"``,
    ``"crop"`` (needs ``rect``) or ``"ffhq"``.
    """
    img = _as_rgb(img)
    h, w = img.shape[:2]
    if method == "auto":
        if (h == w == size) or aligned:
            method = "none"
        elif rect is not None:
            method = "crop"
        elif landmarks is not None or (domain or "").lower() in FACE_DOMAINS:
            method = "ffhq"
        elif (domain or "").lower() in LETTERBOX_DOMAINS:
            method = "letterbox"
        else:
            method = "center"
    if method == "none":
        if h != w:
            raise AlignmentError(f"an already-aligned picture must be square; this one is {w}x{h} "
                                 "(use a centre crop or a manual crop)")
        if h == size:
            return Prepared(img, "as-is")
        return Prepared(resize_square(img, size), "resize", notes=[f"resized {w}x{h} -> {size}x{size}"])
    if method == "center":
        return Prepared(center_crop(img, size), "center")
    if method == "letterbox":
        return Prepared(letterbox(img, size, LETTERBOX_DOMAINS.get((domain or "").lower(), 4 / 3)), "letterbox")
    if method == "crop":
        if rect is None:
            raise ValueError("method 'crop' needs rect=(x, y, width, height)")
        return Prepared(crop_rect(img, rect, size), "crop")
    if method == "ffhq":
        if landmarks is not None:
            out, quad = align_from_landmarks(img, landmarks, size, return_quad=True)
            return Prepared(out, "ffhq", None, quad)
        return align_face(img, size, choose=choose, face_index=face_index, detector=detector)
    raise ValueError(f"unknown alignment method {method!r} (auto, none, center, letterbox, crop, ffhq)")
