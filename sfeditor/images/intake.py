"""Read user photos safely: any common format in, uint8 RGB ``[H, W, 3]`` out.

Formats: PNG, JPEG, WebP, BMP and TIFF (what OpenCV decodes in every wheel).
The file's own header is parsed first (PNG IHDR, JPEG SOF, WebP VP8/VP8L/VP8X,
BMP info header, TIFF IFD 0), so that absurd dimensions (decompression bombs)
and truncated files are refused *before* any pixel buffer is allocated.  Only
then is the file decoded with ``cv2.imdecode(..., cv2.IMREAD_UNCHANGED)`` and
converted explicitly:

* grey -> RGB (channel repeated); grey + alpha -> RGBA first;
* 16-bit -> 8-bit (``round(x * 255 / 65535)``), float (TIFF) -> clipped to [0, 1] -> 8-bit;
* alpha (RGBA, grey + alpha, palette with transparency): ``alpha="white"``
  (default) composites the picture over white, ``alpha="black"`` over black,
  ``alpha="drop"`` throws the alpha channel away (keeps the stored colours,
  which for fully transparent pixels are often arbitrary);
* EXIF orientation is honoured for every format that can carry it (JPEG APP1,
  PNG ``eXIf``, WebP ``EXIF``, TIFF tag 274): ``IMREAD_UNCHANGED`` ignores it,
  so the tag is parsed here and the 8 orientations are applied with numpy
  (the same result ``IMREAD_COLOR`` gives for JPEG).

Every failure is an :class:`ImageError` (a ``ValueError``) with a message
that says what is wrong; nothing here should raise anything else for a bad
file (a missing path is an ``ImageError`` too).
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ImageError", "DamagedImageWarning", "ImageInfo", "read_image", "decode_image", "probe_header", "SUPPORTED_FORMATS",
           "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_BYTES", "DEFAULT_MIN_SIDE", "apply_orientation"]

SUPPORTED_FORMATS = ("PNG", "JPEG", "WebP", "BMP", "TIFF")


class DamagedImageWarning(UserWarning):
    """The file decoded, but its data is damaged (e.g. a JPEG whose lost part shows as a grey band)."""
DEFAULT_MAX_PIXELS = 50_000_000          # 50 megapixels
DEFAULT_MAX_BYTES = 100 * 1024 * 1024    # 100 MiB
DEFAULT_MIN_SIDE = 16                    # smaller pictures carry no usable content
_MAX_SIDE = 65_535                       # no decoder here handles more on one axis anyway
ALPHA_MODES = ("white", "black", "drop")


class ImageError(ValueError):
    """A file that cannot be used as an input image; the message says why."""


@dataclass(frozen=True)
class ImageInfo:
    """What was read: header facts and the conversions applied."""

    format: str
    width: int             # as stored (before the EXIF orientation)
    height: int
    orientation: int = 1   # EXIF orientation 1..8 (1 = as stored)
    channels: int = 3      # decoded channel count (1, 2, 3 or 4)
    bit_depth: int = 8     # 8, 16 or 32 (float)
    had_alpha: bool = False
    source: str = ""
    warnings: tuple = ()   # decoder complaints about damaged data (the picture decoded anyway)

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) after the orientation is applied."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


@dataclass(frozen=True)
class _Header:
    format: str
    width: int
    height: int
    orientation: int = 1


# ----------------------------------------------------------------- reading
def read_image(source, *, alpha: str = "white", max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES, min_side: int = DEFAULT_MIN_SIDE,
               return_info: bool = False):
    """Read a photo from a path (or raw bytes) -> uint8 RGB ``[H, W, 3]`` (upright).

    With ``return_info`` returns ``(rgb, ImageInfo)``.  Raises :class:`ImageError`.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), alpha=alpha, max_pixels=max_pixels, max_bytes=max_bytes,
                            min_side=min_side, return_info=return_info, source="<bytes>")
    try:
        path = Path(os.fspath(source))
    except TypeError:
        raise ImageError(f"expected a file path or bytes, got {type(source).__name__}") from None
    name = str(path)
    from ..validate import check_regular_file

    try:   # a folder, device, FIFO, empty or oversized file is refused before it is opened
        check_regular_file(path, max_bytes, "photo")
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except ValueError as e:
        raise ImageError(str(e)) from None
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ImageError(f"{name}: cannot read the file ({e.strerror or e})") from None
    return decode_image(data, alpha=alpha, max_pixels=max_pixels, max_bytes=max_bytes, min_side=min_side,
                        return_info=return_info, source=name)


def decode_image(data: bytes, *, alpha: str = "white", max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_bytes: int = DEFAULT_MAX_BYTES, min_side: int = DEFAULT_MIN_SIDE,
                 return_info: bool = False, source: str = "<bytes>"):
    """Decode encoded image bytes; see :func:`read_image`."""
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    where = source
    if not data:
        raise ImageError(f"{where}: the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"{where}: the file is larger than the {max_bytes / 2**20:.0f} MiB limit")
    try:
        head = probe_header(data)
    except ImageError as e:
        raise ImageError(f"{where}: {e}") from None
    except (struct.error, IndexError, ValueError) as e:   # defensive: a header parser met garbage
        raise ImageError(f"{where}: damaged image header ({e})") from None
    w, h = head.width, head.height
    if w <= 0 or h <= 0:
        raise ImageError(f"{where}: the {head.format} header declares a zero-size image ({w}x{h})")
    if w > _MAX_SIDE or h > _MAX_SIDE or w * h > max_pixels:
        raise ImageError(f"{where}: the {head.format} header declares {w}x{h} pixels "
                         f"({w * h / 1e6:.1f} megapixels); the limit is {max_pixels / 1e6:.0f} megapixels "
                         f"(refused before decoding)")
    if min(w, h) < min_side:
        raise ImageError(f"{where}: the image is only {w}x{h} pixels; at least {min_side}x{min_side} is needed")

    import cv2

    try:
        if head.format == "JPEG":
            arr, complaints = _decode_jpeg_noting_damage(data)
        else:
            arr, complaints = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), []
    except cv2.error as e:
        raise ImageError(f"{where}: OpenCV could not decode the {head.format} data ({str(e).strip()[:200]})") from None
    if arr is None or arr.size == 0:
        raise ImageError(f"{where}: the {head.format} data could not be decoded (damaged or truncated file)")
    if arr.shape[0] != h or arr.shape[1] != w:
        raise ImageError(f"{where}: decoded {arr.shape[1]}x{arr.shape[0]} pixels but the header says {w}x{h}")
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16, np.dtype(np.float32): 32}.get(arr.dtype)
    if depth is None:
        raise ImageError(f"{where}: unsupported sample type {arr.dtype} in the {head.format} data")
    if head.format == "JPEG" and not complaints and _grey_band(arr):
        complaints.append("the bottom rows are flat grey (128), what libjpeg fills in for lost data")
    notes = tuple(f"{where}: damaged {head.format} data ({c}); the picture may show a grey or smeared band"
                  for c in complaints[:1])
    for note in notes:
        import warnings

        warnings.warn(DamagedImageWarning(note), stacklevel=3)
    rgb, had_alpha = _to_rgb8(arr, alpha, where)
    rgb = np.ascontiguousarray(apply_orientation(rgb, head.orientation))
    if not return_info:
        return rgb
    return rgb, ImageInfo(head.format, w, h, head.orientation, channels, depth, had_alpha, source, notes)


_stderr_lock = __import__("threading").Lock()


def _decode_jpeg_noting_damage(data: bytes):
    """``cv2.imdecode`` with libjpeg's warnings ("Corrupt JPEG data: ...") captured from file descriptor 2."""
    import sys
    import tempfile

    import cv2

    with _stderr_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):    # no real stderr: decode without listening
            return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), []
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read(8192).decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    damage = [ln for ln in lines if "jpeg" in ln.lower() or "corrupt" in ln.lower() or "premature" in ln.lower()]
    other = [ln for ln in lines if ln not in damage]
    if other:                                           # not ours: give it back to stderr
        sys.stderr.write("\n".join(other) + "\n")
    return arr, damage


def _grey_band(arr: np.ndarray, rows: int = 8) -> bool:
    """True when the last ``rows`` (>= 8) rows are exactly 128 everywhere: libjpeg's fill for missing data."""
    if arr is None or arr.ndim < 2 or arr.shape[0] < 4 * rows or arr.dtype != np.uint8:
        return False
    return bool((arr[-rows:] == 128).all())


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    a = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _to_rgb8(arr: np.ndarray, alpha: str, where: str) -> tuple[np.ndarray, bool]:
    """OpenCV's BGR / BGRA / grey / grey+alpha in any depth -> uint8 RGB; returns (rgb, had_alpha)."""
    a8 = _to_uint8(arr)
    if a8.ndim == 2:
        return np.repeat(a8[:, :, None], 3, axis=2), False
    c = a8.shape[2]
    if c == 1:
        return np.repeat(a8, 3, axis=2), False
    if c == 2:                                    # grey + alpha
        a8 = np.concatenate([np.repeat(a8[:, :, :1], 3, axis=2), a8[:, :, 1:]], axis=2)
        c = 4
    elif c == 3:
        return a8[:, :, ::-1], False
    if c != 4:
        raise ImageError(f"{where}: {c}-channel images are not supported (expected grey, RGB or RGBA)")
    rgb = a8[:, :, 2::-1]
    if alpha == "drop":
        return rgb, True
    if arr.dtype == np.uint8:
        a = a8[:, :, 3:].astype(np.float32) / 255.0
    else:                                          # composite at the source precision
        a = _to_float01(arr[:, :, 3:] if arr.ndim == 3 else arr)
    bg = 255.0 if alpha == "white" else 0.0
    out = rgb.astype(np.float32) * a + bg * (1.0 - a)
    return (out + 0.5).clip(0, 255).astype(np.uint8), True


def _to_float01(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored picture upright for EXIF orientation 1..8 (others: unchanged)."""
    if orientation == 2:      # mirrored horizontally
        return img[:, ::-1]
    if orientation == 3:      # rotated 180
        return img[::-1, ::-1]
    if orientation == 4:      # mirrored vertically
        return img[::-1]
    if orientation == 5:      # mirrored + rotated: transpose
        return img.swapaxes(0, 1)
    if orientation == 6:      # stored rotated 90 CCW: rotate 90 CW
        return np.rot90(img, -1)
    if orientation == 7:      # transverse
        return np.rot90(img, 2).swapaxes(0, 1)
    if orientation == 8:      # stored rotated 90 CW: rotate 90 CCW
        return np.rot90(img, 1)
    return img


# ------------------------------------------------------------ header probes
def probe_header(data: bytes) -> _Header:
    """Format, stored size and EXIF orientation from the header, without decoding pixels.

    Also checks the file's structure far enough to catch truncation (PNG chunk
    walk with CRCs up to IEND, JPEG marker walk up to EOI, RIFF / BMP sizes,
    TIFF strip and tile extents).  Raises :class:`ImageError`.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _probe_png(data)
    if data.startswith(b"\xff\xd8"):
        return _probe_jpeg(data)
    if data[:4] == b"RIFF" and len(data) < 16:
        raise ImageError("truncated RIFF/WebP file")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _probe_webp(data)
    if data.startswith(b"BM"):
        return _probe_bmp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _probe_tiff(data)
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        raise ImageError("BigTIFF files are not supported")
    kind = _other_format(data)
    if kind:
        raise ImageError(f"{kind} files are not supported (supported: {', '.join(SUPPORTED_FORMATS)})")
    raise ImageError(f"not an image file (no {'/'.join(SUPPORTED_FORMATS)} signature)")


def _other_format(data: bytes) -> str | None:
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "AVIF/HEIC"
    if data[:4] == b"8BPS":
        return "Photoshop"
    if data[:4] == b"%PDF":
        return "PDF"
    if data[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"):
        return "PNM"
    if data[:4] == b"\x00\x00\x00\x0cjP  " or data[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if data[:4] == b"v/1\x01":
        return "OpenEXR"
    return None


def _probe_png(data: bytes) -> _Header:
    pos, n = 8, len(data)
    width = height = None
    orientation = 1
    seen_idat = False
    first = True
    while True:
        if pos + 8 > n:
            raise ImageError("truncated PNG (the file ends before its IEND chunk)")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if length > 0x7FFFFFFF:
            raise ImageError("damaged PNG (impossible chunk length)")
        end = pos + 12 + length
        if end > n:
            raise ImageError(f"truncated PNG (chunk {ctype.decode('latin-1')!r} runs past the end of the file)")
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:end])[0]
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            raise ImageError(f"damaged PNG (checksum error in chunk {ctype.decode('latin-1')!r})")
        if first:
            if ctype != b"IHDR" or length != 13:
                raise ImageError("damaged PNG (the first chunk is not IHDR)")
            width, height = struct.unpack(">II", body[:8])
            first = False
        elif ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"eXIf":
            orientation = _exif_orientation(body)
        elif ctype == b"IEND":
            break
        pos = end
    if not seen_idat:
        raise ImageError("damaged PNG (no image data)")
    return _Header("PNG", width, height, orientation)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _probe_jpeg(data: bytes) -> _Header:
    pos, n = 2, len(data)
    size = None
    orientation = 1
    while True:
        # find the next marker (0xFF, possibly padded with fill bytes)
        if pos >= n:
            raise ImageError("truncated JPEG (the file ends before its end-of-image marker)")
        if data[pos] != 0xFF:
            raise ImageError(f"damaged JPEG (expected a marker at byte {pos})")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise ImageError("truncated JPEG (the file ends inside a marker)")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:                              # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:    # standalone markers
            continue
        if marker == 0xD8:
            raise ImageError("damaged JPEG (a second start-of-image marker)")
        if pos + 2 > n:
            raise ImageError("truncated JPEG (the file ends inside a segment header)")
        seg_len = struct.unpack(">H", data[pos:pos + 2])[0]
        if seg_len < 2:
            raise ImageError("damaged JPEG (impossible segment length)")
        seg_end = pos + seg_len
        if seg_end > n:
            raise ImageError("truncated JPEG (a segment runs past the end of the file)")
        body = data[pos + 2:seg_end]
        if marker in _SOF and size is None:
            if len(body) < 6:
                raise ImageError("damaged JPEG (short frame header)")
            h, w = struct.unpack(">HH", body[1:5])
            if h == 0:
                raise ImageError("JPEG files whose height is given after the scan (DNL) are not supported")
            size = (w, h)
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(body[6:])
        pos = seg_end
        if marker == 0xDA:                              # SOS: skip the entropy-coded data
            if size is None:
                raise ImageError("damaged JPEG (scan data before the frame header)")
            while True:
                j = data.find(b"\xff", pos)
                if j < 0 or j + 1 >= n:
                    raise ImageError("truncated JPEG (the file ends inside the image data)")
                nxt = data[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:     # stuffed byte or restart marker
                    pos = j + 2
                    continue
                pos = j                                     # the next marker (or its fill bytes)
                break
    if size is None:
        raise ImageError("damaged JPEG (no frame header)")
    return _Header("JPEG", size[0], size[1], orientation)


def _probe_webp(data: bytes) -> _Header:
    n = len(data)
    riff_size = struct.unpack("<I", data[4:8])[0]
    if riff_size + 8 > n:
        raise ImageError("truncated WebP (the file is shorter than its RIFF header says)")
    pos, end = 12, min(n, riff_size + 8)
    size = None
    orientation = 1
    while pos + 8 <= end:
        ctype, clen = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + clen]
        if pos + 8 + clen > end:
            raise ImageError(f"truncated WebP (chunk {ctype.decode('latin-1')!r} runs past the end)")
        if ctype == b"VP8X" and len(body) >= 10:
            w = 1 + int.from_bytes(body[4:7], "little")
            h = 1 + int.from_bytes(body[7:10], "little")
            size = (w, h)
        elif ctype == b"VP8 " and size is None:
            if len(body) < 10 or body[3:6] != b"\x9d\x01\x2a":
                raise ImageError("damaged WebP (bad VP8 frame header)")
            w, h = struct.unpack("<HH", body[6:10])
            size = (w & 0x3FFF, h & 0x3FFF)
        elif ctype == b"VP8L" and size is None:
            if len(body) < 5 or body[0] != 0x2F:
                raise ImageError("damaged WebP (bad VP8L header)")
            bits = int.from_bytes(body[1:5], "little")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif ctype == b"EXIF":
            orientation = _exif_orientation(body[6:] if body.startswith(b"Exif\x00\x00") else body)
        pos += 8 + clen + (clen & 1)
    if size is None:
        raise ImageError("damaged WebP (no image header)")
    return _Header("WebP", size[0], size[1], orientation)


def _probe_bmp(data: bytes) -> _Header:
    n = len(data)
    if n < 26:
        raise ImageError("truncated BMP (incomplete header)")
    offset, hsize = struct.unpack("<II", data[10:18])
    if hsize == 12:
        w, h = struct.unpack("<HH", data[18:22])
        bpp, compression = struct.unpack("<H", data[24:26])[0], 0
    elif hsize >= 40:
        if n < 34:
            raise ImageError("truncated BMP (incomplete header)")
        w, h = struct.unpack("<ii", data[18:26])
        bpp, compression = struct.unpack("<HI", data[28:34])
        h = abs(h)
    else:
        raise ImageError(f"damaged BMP (unknown header size {hsize})")
    if w < 0:
        raise ImageError("damaged BMP (negative width)")
    if offset > n:
        raise ImageError("truncated BMP (the pixel data lies past the end of the file)")
    if compression in (0, 3) and bpp in (1, 4, 8, 16, 24, 32) and w and h:
        stride = ((w * bpp + 31) // 32) * 4
        if offset + stride * h > n:
            raise ImageError("truncated BMP (the file ends inside the pixel data)")
    return _Header("BMP", w, h, 1)


_TIFF_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}


def _tiff_ifd(data: bytes, start: int = 0) -> tuple[dict[int, list[int]], str]:
    """Read IFD 0 of a TIFF structure beginning at ``data[start:]``: tag -> list of ints."""
    bo = data[start:start + 2]
    if bo == b"II":
        e = "<"
    elif bo == b"MM":
        e = ">"
    else:
        raise ImageError("damaged TIFF/EXIF structure (bad byte order)")
    n = len(data)
    (ifd,) = struct.unpack(e + "I", data[start + 4:start + 8])
    ifd += start
    if ifd + 2 > n:
        raise ImageError("truncated TIFF (the first directory lies past the end of the file)")
    (count,) = struct.unpack(e + "H", data[ifd:ifd + 2])
    if ifd + 2 + 12 * count > n:
        raise ImageError("truncated TIFF (directory runs past the end of the file)")
    tags: dict[int, list[int]] = {}
    for k in range(count):
        p = ifd + 2 + 12 * k
        tag, typ, cnt = struct.unpack(e + "HHI", data[p:p + 8])
        size = _TIFF_TYPES.get(typ)
        if size is None or typ not in (1, 3, 4, 16) or cnt > 1_000_000:
            continue
        nbytes = size * cnt
        if nbytes <= 4:
            raw = data[p + 8:p + 8 + nbytes]
        else:
            (off,) = struct.unpack(e + "I", data[p + 8:p + 12])
            off += start
            if off + nbytes > n:
                raise ImageError(f"truncated TIFF (tag {tag} data lies past the end of the file)")
            raw = data[off:off + nbytes]
        fmt = {1: "B", 3: "H", 4: "I", 16: "Q"}[typ]
        tags[tag] = list(struct.unpack(e + fmt * cnt, raw))
    return tags, e


def _exif_orientation(tiff: bytes) -> int:
    """Orientation tag (274) of an EXIF TIFF block; 1 when absent or unreadable."""
    try:
        tags, _ = _tiff_ifd(tiff)
    except (ImageError, struct.error):
        return 1
    val = tags.get(0x0112, [1])
    return int(val[0]) if val and 1 <= val[0] <= 8 else 1


def _probe_tiff(data: bytes) -> _Header:
    tags, _ = _tiff_ifd(data)
    if 256 not in tags or 257 not in tags:
        raise ImageError("damaged TIFF (no image width/height)")
    w, h = tags[256][0], tags[257][0]
    n = len(data)
    for off_tag, cnt_tag in ((273, 279), (324, 325)):       # strips, tiles
        offs, cnts = tags.get(off_tag), tags.get(cnt_tag)
        if offs and cnts:
            if any(o + c > n for o, c in zip(offs, cnts)):
                raise ImageError("truncated TIFF (image data lies past the end of the file)")
    orient = tags.get(274, [1])[0]
    return _Header("TIFF", w, h, orient if 1 <= orient <= 8 else 1)
