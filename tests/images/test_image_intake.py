"""Photo intake: every format in, uint8 RGB out; every bad file refused with ImageError, never a crash."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from sfeditor.images import intake as image_intake
from sfeditor.images.intake import ImageError, probe_header, read_image

cv2.setNumThreads(1)


def _pattern(h=24, w=40, seed=0) -> np.ndarray:
    """An asymmetric RGB picture: red top-left, green top-right, blue bottom-left markers."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([90 + 60 * xx / w, 90 + 60 * yy / h, 120 + 0 * xx + seed], axis=2).astype(np.uint8)
    img[:6, :6] = (255, 0, 0)
    img[:6, -6:] = (0, 255, 0)
    img[-6:, :6] = (0, 0, 255)
    return img


def _encode(ext: str, rgb_or_raw: np.ndarray, params=(), raw: bool = False) -> bytes:
    a = rgb_or_raw if raw else rgb_or_raw[:, :, ::-1]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(a), list(params))
    assert ok
    return buf.tobytes()


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def _exif_tiff(orientation: int, big_endian: bool = True) -> bytes:
    e = ">" if big_endian else "<"
    return ((b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1)
            + struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(e + "I", 0))


def _jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose APP1 segment carries an EXIF orientation tag (EXIF bytes written by hand)."""
    b = _encode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 100])
    payload = b"Exif\x00\x00" + _exif_tiff(orientation)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return b[:2] + app1 + b[2:]


# ------------------------------------------------------------ good files
@pytest.mark.parametrize("ext,exact", [(".png", True), (".webp", True), (".bmp", True), (".tiff", True),
                                       (".jpg", False)])
def test_formats_round_trip(tmp_path, ext, exact):
    img = _pattern()
    params = {".webp": [cv2.IMWRITE_WEBP_QUALITY, 101], ".jpg": [cv2.IMWRITE_JPEG_QUALITY, 100]}.get(ext, [])
    path = tmp_path / f"pic{ext}"
    path.write_bytes(_encode(ext, img, params))
    out, info = read_image(path, return_info=True)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert (info.width, info.height, info.orientation) == (40, 24, 1)
    err = np.abs(out.astype(int) - img).mean()
    assert err == 0 if exact else err < 4


def test_grayscale_is_replicated():
    g = np.tile(np.arange(0, 240, 10, dtype=np.uint8)[:, None], (1, 20))
    out, info = read_image(_encode(".png", g, raw=True), return_info=True)
    assert out.shape == (24, 20, 3) and info.channels == 1
    assert np.array_equal(out[:, :, 0], g) and np.array_equal(out[:, :, 1], g) and np.array_equal(out[:, :, 2], g)


def test_rgba_composited_on_white_or_dropped():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 2] = 255                 # BGRA: red
    rgba[:10, :, 3] = 255              # top half opaque, bottom transparent
    rgba[10:15, :, 3] = 128            # a half-transparent band
    data = _encode(".png", rgba, raw=True)
    out, info = read_image(data, return_info=True)
    assert info.had_alpha
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[18, 0]) == (255, 255, 255)
    assert tuple(out[12, 0]) == (255, 127, 127)
    assert tuple(read_image(data, alpha="black")[18, 0]) == (0, 0, 0)
    assert tuple(read_image(data, alpha="drop")[18, 0]) == (255, 0, 0)
    with pytest.raises(ValueError):
        read_image(data, alpha="pink")


def test_16_bit_scaled_to_8_bit():
    rng = np.random.default_rng(1)
    g16 = (rng.random((20, 24)) * 65535).astype(np.uint16)
    want = np.round(g16.astype(np.float64) * 255 / 65535).astype(np.uint8)
    out, info = read_image(_encode(".png", g16, raw=True), return_info=True)
    assert info.bit_depth == 16 and np.array_equal(out[:, :, 0], want)
    c16 = (rng.random((20, 24, 3)) * 65535).astype(np.uint16)
    out = read_image(_encode(".tiff", c16, raw=True))
    assert np.array_equal(out, np.round(c16[:, :, ::-1].astype(np.float64) * 255 / 65535).astype(np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv(orientation):
    img = _pattern()
    data = _jpeg_with_orientation(img, orientation)
    ours, info = read_image(data, return_info=True)
    assert info.orientation == orientation
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]   # applies EXIF
    assert ours.shape == ref.shape and np.array_equal(ours, ref)


def test_exif_rotated_jpeg_comes_out_upright():
    img = _pattern()                                   # red marker top-left as stored
    ours = read_image(_jpeg_with_orientation(img, 6))  # 6: display rotated 90 degrees clockwise
    assert ours.shape == (40, 24, 3)
    assert ours[:6, -6:, 0].mean() > 200 and ours[:6, -6:, 1].mean() < 60   # red now top-right
    assert ours[:6, :6, 2].mean() > 200                                       # blue now top-left


def test_png_exif_chunk_is_honoured():
    b = _encode(".png", _pattern())
    exif = _png_chunk(b"eXIf", _exif_tiff(8, big_endian=False))
    data = b[:33] + exif + b[33:]                      # after the IHDR chunk
    out = read_image(data)
    assert out.shape == (40, 24, 3)
    assert np.array_equal(out, np.rot90(_pattern(), 1))


# ------------------------------------------------------------- bad files
def test_garbage_named_png(tmp_path):
    p = tmp_path / "photo.png"
    p.write_bytes(b"this is not an image at all, just text" * 10)
    with pytest.raises(ImageError, match="not an image"):
        read_image(p)


def test_zero_byte_and_missing_and_folder(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(p)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path)
    with pytest.raises(ImageError):
        read_image(12345)


def test_file_size_limit(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(_encode(".png", _pattern()))
    with pytest.raises(ImageError, match="limit"):
        read_image(p, max_bytes=100)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp", ".tiff"])
def test_truncated_files(ext):
    data = _encode(ext, _pattern(48, 48))
    for cut in (len(data) // 3, len(data) // 2, len(data) - 1, 12):
        with pytest.raises(ImageError, match="truncated|damaged|not an image"):
            read_image(data[:cut])


def test_tiny_images_rejected():
    one = _encode(".png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageError, match="1x1"):
        read_image(one)
    assert read_image(one, min_side=1).shape == (1, 1, 3)


def _never_decode(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("imdecode must not run for a refused header")
    monkeypatch.setattr(cv2, "imdecode", boom)


def test_png_bomb_refused_before_decoding(monkeypatch):
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
    data = b"\x89PNG\r\n\x1a\n" + ihdr + idat + _png_chunk(b"IEND", b"")
    _never_decode(monkeypatch)
    with pytest.raises(ImageError, match="100000x100000.*refused before decoding"):
        read_image(data)
    with pytest.raises(ImageError, match="megapixels"):      # just over the 50 MP default
        read_image(data.replace(struct.pack(">II", 100_000, 100_000), struct.pack(">II", 8000, 7000))[:16]
                   + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 7000, 8, 2, 0, 0, 0))[8:] + idat
                   + _png_chunk(b"IEND", b""))


def test_jpeg_bmp_webp_bombs_refused(monkeypatch):
    jpeg = bytearray(_encode(".jpg", _pattern()))
    i = jpeg.index(b"\xff\xc0")
    jpeg[i + 5:i + 9] = struct.pack(">HH", 60000, 60000)
    bmp = bytearray(_encode(".bmp", _pattern()))
    bmp[18:26] = struct.pack("<ii", 30000, 30000)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (40000 - 1).to_bytes(3, "little") * 2
    webp = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    _never_decode(monkeypatch)
    for data in (bytes(jpeg), bytes(bmp), webp):
        with pytest.raises(ImageError, match="refused before decoding|truncated"):
            read_image(data)
    with pytest.raises(ImageError, match="refused before decoding"):
        read_image(bytes(jpeg))


def test_zero_size_header():
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IDAT", b"x") + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="zero-size"):
        read_image(data)


def test_damaged_png_checksum():
    data = bytearray(_encode(".png", _pattern()))
    data[40] ^= 0xFF                                   # inside IDAT
    with pytest.raises(ImageError, match="checksum"):
        read_image(bytes(data))


def test_unsupported_formats_named():
    with pytest.raises(ImageError, match="GIF"):
        read_image(b"GIF89a" + b"\x00" * 100)
    with pytest.raises(ImageError, match="BigTIFF"):
        probe_header(b"II+\x00" + b"\x00" * 100)


def test_random_corruption_never_crashes():
    rng = np.random.default_rng(0)
    bases = [_encode(ext, _pattern(32, 32)) for ext in (".png", ".jpg", ".webp", ".bmp", ".tiff")]
    for k in range(150):
        data = bytearray(bases[k % len(bases)])
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[:int(rng.integers(1, len(data)))]
        try:
            out = read_image(bytes(data))
        except ImageError:
            continue
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


def test_apply_orientation_is_exported():
    a = np.arange(6).reshape(2, 3)
    assert np.array_equal(image_intake.apply_orientation(a, 6), np.rot90(a, -1))
    assert np.array_equal(image_intake.apply_orientation(a, 1), a)
