"""The real model files: a registry of the official files and a verified downloader (issue 40).

The paper's experiments (Sec. 4, A.6) use NVIDIA's StyleGAN2 config-f generators
(FFHQ 1024, LSUN car 512, LSUN church 256), the authors' FusionNet weights and
an e4e encoder (Sec. 6.1).  NVIDIA publishes the generators as direct downloads;
the FusionNet weights and e4e encoders have no direct link, so users fetch them
by hand and *register* them here.

Everything lands in a per-user cache (:func:`cache_dir`: ``$SFEDITOR_CACHE``,
else ``$XDG_CACHE_HOME/sfeditor``, else ``~/.cache/sfeditor``) under
``models/``, described by ``models/registry.json``.  A download

* asks for the licence once (:class:`LicenceNotAccepted` until accepted),
* streams into ``<file>.part`` and resumes it with an HTTP ``Range`` request,
* checks the size (``Content-Length`` / ``Content-Range`` / the known size),
* renames the finished ``.part`` into place (atomic completion),
* records its SHA-256 (and checks it against a known one, where known),
* loads it through the project's safe loaders (:mod:`sfeditor.model.checkpoints`,
  :func:`sfeditor.fusion.hierarchy.load_hierarchy`, :func:`sfeditor.images.e4e.load_e4e`),
* converts it once to the project's own format, whose SHA-256 is recorded too
  and checked every time the file is used (:func:`installed_path`).

A file that fails a check is removed from the cache with a one-line message.
Qt-free; the CLI (``sfeditor models``) and *File ▸ Get models…* both use it.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_write_text
from ..jobs import Cancelled

__all__ = ["KnownModel", "KNOWN", "ModelError", "LicenceNotAccepted", "cache_dir", "models_dir", "Registry",
           "download", "register", "installed_path", "resolve_model", "remove", "registered_encoder", "domain_of_file",
           "entry_for", "sha256_of", "human_size", "status_rows", "encoder_domain", "open_spec", "BASE_URL_ENV"]

BASE_URL_ENV = "SFEDITOR_MODELS_URL"     # replaces the folder of every direct link (tests, mirrors)
KINDS = ("generator", "fusion", "encoder")
_CHUNK = 1 << 20

NVIDIA_NC = "NVIDIA Source Code License-NC"
NVIDIA_NC_TEXT = (
    "The StyleGAN2 networks are published by NVIDIA under the Nvidia Source Code License-NC: they may be used "
    "and redistributed non-commercially only, meaning for research or evaluation purposes; commercial use "
    "needs a licence from NVIDIA. Full text: https://github.com/NVlabs/stylegan2/blob/master/LICENSE.txt")
_NV = "https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/"
_SF_REPO = "https://github.com/OmerKafri/StyleFusion"
_E4E_REPO = "https://github.com/omertov/encoder4editing"


@dataclass(frozen=True)
class KnownModel:
    """One official file: where it comes from and what it is for."""

    name: str
    kind: str                    # "generator", "fusion" or "encoder"
    domain: str                  # "ffhq", "car", "church"
    description: str
    filename: str
    url: str | None              # a direct link, or None (fetch by hand, then register)
    licence: str
    source: str                  # the page that publishes the file
    size: int | None = None      # bytes, where known
    sha256: str | None = None    # where known
    licence_text: str = ""       # shown before the first download
    how_to_get: str = ""         # for files without a direct link
    resolution: int | None = None


def _sf(domain: str, nets: str) -> KnownModel:
    return KnownModel(
        f"stylefusion-{domain}", "fusion", domain, f"StyleFusion FusionNet hierarchy ({nets})",
        f"{domain}_weights.json", None, "see the StyleFusion repository", _SF_REPO,
        how_to_get=(f"no direct link: the official repository's weights/{domain}_weights.json lists the net files "
                    f"(weights/{domain}/*.pt) but the repository holds only placeholders; get the files from the "
                    f"authors ({_SF_REPO}), keep them in the JSON's layout, then run "
                    f"`sfeditor models register stylefusion-{domain} weights/{domain}_weights.json`"))


def _e4e(domain: str, fname: str, res: int) -> KnownModel:
    return KnownModel(
        f"e4e-{domain}", "encoder", domain, f"e4e encoder for the {res} px {domain} generator (photo -> W+)",
        fname, None, "see the e4e repository (MIT for the code)", _E4E_REPO, resolution=res,
        how_to_get=(f"no direct link: download {fname} from the 'Pretrained Models' table of {_E4E_REPO} "
                    f"(a Google Drive link), then run `sfeditor models register e4e-{domain} {fname}`"))


#: the official files, by name
KNOWN: dict[str, KnownModel] = {m.name: m for m in [
    KnownModel("stylegan2-ffhq", "generator", "ffhq", "StyleGAN2 config-f, FFHQ faces 1024 px",
               "stylegan2-ffhq-config-f.pkl", _NV + "stylegan2-ffhq-config-f.pkl", NVIDIA_NC,
               "https://github.com/NVlabs/stylegan2", licence_text=NVIDIA_NC_TEXT, resolution=1024),
    KnownModel("stylegan2-car", "generator", "car", "StyleGAN2 config-f, LSUN cars 512 px (letterboxed 512x384)",
               "stylegan2-car-config-f.pkl", _NV + "stylegan2-car-config-f.pkl", NVIDIA_NC,
               "https://github.com/NVlabs/stylegan2", licence_text=NVIDIA_NC_TEXT, resolution=512),
    KnownModel("stylegan2-church", "generator", "church", "StyleGAN2 config-f, LSUN churches 256 px",
               "stylegan2-church-config-f.pkl", _NV + "stylegan2-church-config-f.pkl", NVIDIA_NC,
               "https://github.com/NVlabs/stylegan2", licence_text=NVIDIA_NC_TEXT, resolution=256),
    _sf("ffhq", "all, bg_hair_clothes, bg_clothes, face, skin_mouth"),
    _sf("car", "all, car, background"),
    _sf("church", "all"),
    _e4e("ffhq", "e4e_ffhq_encode.pt", 1024),
    _e4e("car", "e4e_cars_encode.pt", 512),
    _e4e("church", "e4e_church_encode.pt", 256),
]}


class ModelError(ValueError):
    """A model file could not be fetched, checked or found; the message says why (one line)."""


class LicenceNotAccepted(ModelError):
    """The licence of a file has not been accepted yet (``--accept-licence`` or the prompt)."""

    def __init__(self, model: KnownModel):
        super().__init__(f"{model.name}: the licence ({model.licence}) must be accepted before the first download; "
                         f"pass --accept-licence after reading it ({model.licence_text or model.source})")
        self.model = model


# ================================================================== places
def cache_dir() -> Path:
    """``$SFEDITOR_CACHE``, else ``$XDG_CACHE_HOME/sfeditor``, else ``~/.cache/sfeditor``."""
    env = os.environ.get("SFEDITOR_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sfeditor"


def models_dir() -> Path:
    return cache_dir() / "models"


def human_size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def sha256_of(path: str | os.PathLike, cancel=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK * 4):
            h.update(chunk)
            if cancel is not None and getattr(cancel, "requested", False):
                raise Cancelled("checksum cancelled")
    return h.hexdigest()


# ================================================================ registry
class Registry:
    """``models/registry.json``: the installed files and the accepted licences (written atomically)."""

    VERSION = 1

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else models_dir()
        self.path = self.root / "registry.json"
        self.models: dict[str, dict] = {}
        self.licences: dict[str, str] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
                    raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelError(f"{self.path}: damaged model registry ({e}); delete it and register again") \
                    from None
            self.models = {str(k): v for k, v in data.get("models", {}).items() if isinstance(v, dict)}
            self.licences = {str(k): str(v) for k, v in (data.get("licences") or {}).items()}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"version": self.VERSION, "models": self.models,
                                                 "licences": self.licences}, indent=1, sort_keys=True))

    def file_of(self, name: str) -> Path | None:
        rec = self.models.get(name)
        return self.root / rec["file"] if rec and isinstance(rec.get("file"), str) else None

    def accepted(self, licence: str) -> bool:
        return licence in self.licences

    def accept(self, licence: str) -> None:
        self.licences[licence] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.save()


def entry_for(name: str) -> KnownModel:
    try:
        return KNOWN[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(KNOWN)} "
                         "(register another file with --kind and --domain)") from None


# ================================================================ download
def _url_for(model: KnownModel, base_url: str | None) -> str:
    base = base_url or os.environ.get(BASE_URL_ENV)
    if not model.url:
        raise ModelError(f"{model.name}: {model.how_to_get}")
    return base.rstrip("/") + "/" + model.filename if base else model.url


def _cancelled(cancel) -> bool:
    return bool(cancel is not None and getattr(cancel, "requested", False))


def _fetch(url: str, part: Path, known_size: int | None, progress, cancel, timeout: float) -> int:
    """Stream ``url`` into ``part`` (resuming what is there); returns the total size in bytes."""
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "sfeditor", **({"Range": f"bytes={have}-"} if have
                                                                              else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            total = (e.headers.get("Content-Range") or "").rsplit("/", 1)[-1]
            if have == (int(total) if total.isdigit() else known_size):      # nothing left to fetch
                return have
            part.unlink()                                         # the .part does not fit this file: start over
            return _fetch(url, part, known_size, progress, cancel, timeout)
        raise ModelError(f"{url}: the server answered HTTP {e.code} ({e.reason})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ModelError(f"{url}: could not connect ({reason}); check the network and run the command again") \
            from None
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            rng = resp.headers.get("Content-Range", "")          # "bytes START-END/TOTAL"
            try:
                start = int(rng.split()[1].split("-")[0])
                total = rng.rsplit("/", 1)[1]
                total = int(total) if total != "*" else (have + length if length is not None else None)
            except (IndexError, ValueError):
                raise ModelError(f"{url}: malformed Content-Range {rng!r}") from None
            if start != have:
                raise ModelError(f"{url}: the server resumed at byte {start}, not {have}")
            mode = "ab"
        elif status == 200:
            have, total, mode = 0, length, "wb"                   # no range support: start over
        else:
            raise ModelError(f"{url}: unexpected HTTP status {status}")
        if known_size is not None and total is not None and total != known_size:
            raise ModelError(f"{url}: wrong size: the server sends {total} bytes, the file is known to have "
                             f"{known_size}; not downloading it")
        total = total if total is not None else known_size
        done = have
        with open(part, mode) as f:
            if progress:
                progress(done, total or 0, "downloading")
            while True:
                if _cancelled(cancel):
                    f.flush()
                    raise Cancelled(f"download cancelled at {done} bytes; run it again to resume")
                try:
                    chunk = resp.read1(_CHUNK)                     # what has arrived (up to 1 MiB)
                except (OSError, ValueError, http.client.HTTPException) as e:   # reset / timed out mid-file
                    f.flush()
                    raise ModelError(f"{url}: the transfer broke off at {done} of {total or '?'} bytes ({e}); "
                                     "run the command again to resume") from None
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if total is not None and done > total:
                    break
                if progress:
                    progress(done, total or 0, "downloading")
            f.flush()
            os.fsync(f.fileno())
    if total is not None and done < total:
        raise ModelError(f"{url}: the transfer broke off at {done} of {total} bytes; run the command again to "
                         "resume")
    if total is not None and done > total:
        part.unlink()
        raise ModelError(f"{url}: wrong size: received more than the {total} bytes announced; the partial file "
                         "was removed")
    return done


def download(model: str | KnownModel, *, accept_licence: bool = False, base_url: str | None = None,
             progress: Callable[[int, int, Any], None] | None = None, cancel=None, keep_original: bool = False,
             timeout: float = 60.0, registry: Registry | None = None) -> dict:
    """Fetch, check, convert and register a file with a direct link; returns its registry record.

    Already installed: the recorded checksum is checked and the record returned.
    """
    m = entry_for(model) if isinstance(model, str) else model
    reg = registry or Registry()
    if m.name in reg.models:
        installed_path(m.name, registry=reg, cancel=cancel)
        return reg.models[m.name]
    url = _url_for(m, base_url)
    if not reg.accepted(m.licence):
        if not accept_licence:
            raise LicenceNotAccepted(m)
        reg.accept(m.licence)
    folder = reg.root / m.name
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (m.filename + ".part")
    original = folder / m.filename
    try:
        _fetch(url, part, m.size, progress, cancel, timeout)      # a broken-off transfer keeps its .part
        os.replace(part, original)                                # atomic completion
        return _install(m, original, reg, source=url, progress=progress, cancel=cancel, keep_original=keep_original)
    except BaseException:
        with contextlib.suppress(OSError):
            original.unlink()
        _prune(folder)
        raise


def register(name: str, file: str | os.PathLike, *, kind: str | None = None, domain: str | None = None,
             progress=None, cancel=None, registry: Registry | None = None) -> dict:
    """Validate a file the user fetched and install it (converted / copied) under ``name``."""
    reg = registry or Registry()
    src = Path(os.fspath(file)).expanduser()
    if not src.is_file():
        raise ModelError(f"{src}: no such file")
    if name in KNOWN:
        m = KNOWN[name]
        if (kind and kind != m.kind) or (domain and domain != m.domain):
            raise ModelError(f"{name} is the {m.kind} for {m.domain}; leave out --kind/--domain or pick another name")
    else:
        if kind not in KINDS or not domain:
            raise ModelError(f"{name!r} is not a known model; give --kind ({', '.join(KINDS)}) and --domain")
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ModelError(f"{name!r}: use letters, digits, '-', '_' and '.' in a model name")
        m = KnownModel(name, kind, domain, f"user-registered {kind}", src.name, None, "as given by its source",
                       str(src))
    if name in reg.models:
        raise ModelError(f"{name} is already installed ({reg.file_of(name)}); `sfeditor models remove {name}` first")
    folder = reg.root / m.name
    existed = folder.exists()
    try:
        return _install(m, src, reg, source=str(src.resolve()), progress=progress, cancel=cancel,
                        keep_original=True)
    except BaseException:
        if not existed:
            _prune(folder)
        raise


def _prune(folder: Path) -> None:
    """Remove a model folder left without an installed file (keeps a resumable .part)."""
    if folder.is_dir() and not any(p.name.endswith(".part") for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def _install(m: KnownModel, original: Path, reg: Registry, *, source: str, progress, cancel,
             keep_original: bool) -> dict:
    """Checksum + load check + conversion of ``original``; records and returns the registry entry."""
    if progress:
        progress(0, 0, "checking")
    size = original.stat().st_size
    if m.size is not None and size != m.size:
        raise ModelError(f"{original.name}: wrong size: {size} bytes, the file is known to have {m.size}")
    digest = sha256_of(original, cancel)
    if m.sha256 and digest != m.sha256.lower():
        raise ModelError(f"{original.name}: SHA-256 {digest} differs from the published {m.sha256}")
    folder = reg.root / m.name
    folder.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(0, 0, "converting")
    out, fmt, info = _convert(m, original, folder, cancel)
    rec = {"name": m.name, "kind": m.kind, "domain": m.domain, "file": out.relative_to(reg.root).as_posix(),
           "sha256": sha256_of(out), "size": out.stat().st_size, "format": fmt,
           "source": source, "source_sha256": digest, "source_size": size, "licence": m.licence,
           "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    if original.parent == folder and not keep_original and original != out:
        original.unlink()
    reg.models[m.name] = rec
    reg.save()
    return rec


def _convert(m: KnownModel, original: Path, folder: Path, cancel) -> tuple[Path, str, dict]:
    """Load ``original`` through the project's safe loaders and write the project's own format once."""
    if m.kind == "generator":
        from .checkpoints import CheckpointError, load_generator, read_checkpoint, save_generator

        try:
            data = read_checkpoint(original)
            G = load_generator(original, device="cpu")
        except (CheckpointError, ValueError, OSError) as e:
            raise ModelError(f"{original.name}: failed the load check ({_strip(e, original)}); the file was "
                             "removed from the cache") from None
        if m.resolution and G.size != m.resolution:
            raise ModelError(f"{original.name}: a {G.size} px generator, expected {m.resolution} px for {m.name}; "
                             "the file was removed from the cache")
        out = folder / f"{m.name}.sfeditor.pt"
        save_generator(G, out, meta={"source": m.name, "source_format": data.format, "domain": m.domain})
        return out, "sfeditor-generator", {"resolution": G.size, "source_format": data.format}
    if m.kind == "fusion":
        from ..fusion.hierarchy import load_hierarchy
        from ..regions.tree import paper_tree

        try:     # a known hierarchy gets its paper tree (A.1), whatever nodes its JSON lists
            h = load_hierarchy(original, tree=paper_tree(m.domain) if m.name in KNOWN else None)
        except (ValueError, OSError, KeyError) as e:
            raise ModelError(f"{original.name}: failed the load check ({_strip(e, original)})") from None
        out = folder / f"{m.name}.hierarchy.pt"
        h.meta = {**getattr(h, "meta", {}), "source": m.name, "domain": m.domain}
        h.save(out)
        return out, "sfeditor-hierarchy", {"nodes": ", ".join(h.internal_nodes)}
    # encoder: an e4e/pSp checkpoint, or a toy encoder; validated by building it, stored as it is
    from ..images.e4e import E4EUnsupported, is_e4e_file, load_e4e
    from ..images.toy_encoder import LooksLikeE4E, load_toy_encoder

    try:
        try:
            if is_e4e_file(original):           # e4e views share storage: the toy reader would refuse it
                raise LooksLikeE4E(str(original))
            load_toy_encoder(original)
            fmt, info = "sfeditor-toy-encoder", {}
        except LooksLikeE4E:
            enc = load_e4e(original)                  # validated by read_e4e, built with strict key matching
            res = 2 ** ((enc.net.n_styles + 2) // 2)
            if m.resolution and res != m.resolution:
                raise ValueError(f"an encoder for a {res} px generator, {m.name} needs {m.resolution} px")
            del enc
            fmt, info = "e4e", {"resolution": res}
    except (E4EUnsupported, ValueError, OSError) as e:
        raise ModelError(f"{original.name}: failed the load check ({_strip(e, original)})") from None
    out = folder / (m.filename if original.parent != folder else original.name)
    if original.resolve() != out.resolve():
        tmp = out.with_name(out.name + ".copying")
        try:
            with open(original, "rb") as a, open(tmp, "wb") as b:
                while chunk := a.read(_CHUNK * 4):
                    if _cancelled(cancel):
                        raise Cancelled("register cancelled")
                    b.write(chunk)
                b.flush()
                os.fsync(b.fileno())
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return out, fmt, info


def _strip(e: BaseException, path: Path) -> str:
    """The error's message without a leading file path (the caller names the file)."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    for p in (str(path), str(path.resolve())):
        if msg.startswith(p + ": "):
            msg = msg[len(p) + 2:]
    return msg


# ================================================================= later use
def resolve_model(source):
    """``source`` as the loaders take it: the installed file of a model name known to or registered with
    ``sfeditor models`` (when no file of that name exists); anything else unchanged."""
    if isinstance(source, str) and not os.path.exists(source) and (source in KNOWN or source in Registry().models):
        return os.fspath(installed_path(source))
    return source


def installed_path(name: str, *, verify: bool = True, registry: Registry | None = None, cancel=None) -> Path:
    """The installed file of ``name``, its size and SHA-256 checked against the recorded ones."""
    reg = registry or Registry()
    rec = reg.models.get(name)
    if rec is None:
        hint = ""
        if name in KNOWN:
            m = KNOWN[name]
            hint = (f"; fetch it with `sfeditor models download {name}`" if m.url else f"; {m.how_to_get}")
        raise ModelError(f"{name} is not installed{hint}")
    path = reg.file_of(name)
    if path is None or not path.is_file():
        raise ModelError(f"{name}: the installed file {path} is missing; `sfeditor models remove {name}` and fetch "
                         "it again")
    if verify:
        size = path.stat().st_size
        digest = sha256_of(path, cancel) if size == rec.get("size") else None
        if digest != rec.get("sha256"):
            raise ModelError(f"{name}: checksum mismatch: {path} changed since it was installed (SHA-256 "
                             f"{(digest or 'size ' + str(size))[:16]}…, recorded {str(rec.get('sha256'))[:16]}…); "
                             f"`sfeditor models remove {name}` and install it again")
    return path


def remove(name: str, registry: Registry | None = None) -> bool:
    """Delete ``name``'s files (and any partial download) from the cache; False if nothing was there."""
    reg = registry or Registry()
    found = reg.models.pop(name, None) is not None
    folder = reg.root / name
    if found:
        reg.save()
    if folder.is_dir() and folder.resolve().parent == reg.root.resolve():
        shutil.rmtree(folder)
        found = True
    return found


def registered_encoder(domain: str | None, registry: Registry | None = None) -> Path | None:
    """The installed, checksum-verified encoder for ``domain`` (``None`` if none is registered)."""
    if not domain:
        return None
    try:
        reg = registry or Registry()
    except ModelError:
        return None
    names = [n for n, r in reg.models.items() if r.get("kind") == "encoder" and r.get("domain") == domain]
    names.sort(key=lambda n: (n != f"e4e-{domain}", n))          # the official one first
    return installed_path(names[0], registry=reg) if names else None


def domain_of_file(path: str | os.PathLike | None, registry: Registry | None = None) -> str | None:
    """The domain of an installed file given by path (e.g. the generator an editor opened), else None.

    An installed model's *name* (``sfeditor render -m stylegan2-church``: what :func:`resolve_model`
    turns into its file) gives that model's domain too; without this, commands given the name fell back
    to ψ 1 and found no e4e for the domain (found by tests/model/test_fullsize_chain.py, issue 40).
    """
    if not path:
        return None
    try:
        reg = registry or Registry()
        if isinstance(path, str) and not os.path.exists(path) and path in reg.models:
            return reg.models[path].get("domain")
        target = Path(os.fspath(path)).resolve()
    except (ModelError, OSError):
        return None
    for name, rec in reg.models.items():
        f = reg.file_of(name)
        if f is not None and f.resolve() == target:
            return rec.get("domain")
    return None


def status_rows(registry: Registry | None = None) -> list[dict]:
    """One row per known or registered model (for ``sfeditor models list`` and the dialog)."""
    reg = registry or Registry()
    rows = []
    for m in KNOWN.values():
        rec = reg.models.get(m.name)
        rows.append({**asdict(m), "installed": rec is not None, "record": rec,
                     "size_text": human_size(rec["source_size"] if rec else m.size)})
    for name, rec in reg.models.items():
        if name not in KNOWN:
            m = KnownModel(name, rec.get("kind", "?"), rec.get("domain", "?"), f"user-registered {rec.get('kind')}",
                           Path(rec.get("file", "")).name, None, rec.get("licence", "?"), rec.get("source", "?"))
            rows.append({**asdict(m), "installed": True, "record": rec, "size_text": human_size(rec.get("size"))})
    return rows


def encoder_domain(domain: str | None, generator_source: str | os.PathLike | None = None,
                   registry: Registry | None = None) -> str | None:
    """The domain whose encoder fits a model: that of its installed generator file if it is one, else ``domain``."""
    return domain_of_file(generator_source, registry) or domain


def open_spec(name: str, registry: Registry | None = None) -> dict:
    """``{"generator", "hierarchy", "domain"}`` paths (checksum-verified) to open the installed generator ``name``
    in the editor, with the domain's installed FusionNet hierarchy when there is one."""
    reg = registry or Registry()
    rec = reg.models.get(name)
    if rec is not None and rec.get("kind") != "generator":
        raise ModelError(f"{name} is a {rec.get('kind')}, not a generator")
    gen = installed_path(name, registry=reg)
    dom = rec.get("domain")
    fus = [n for n, r in reg.models.items() if r.get("kind") == "fusion" and r.get("domain") == dom]
    fus.sort(key=lambda n: (n != f"stylefusion-{dom}", n))
    return {"generator": str(gen), "hierarchy": str(installed_path(fus[0], registry=reg)) if fus else None,
            "domain": dom}
