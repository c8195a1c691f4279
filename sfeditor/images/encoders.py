"""Which image encoder gives inversion its first guess (Sec. 6): a toy encoder, or an official
e4e checkpoint given by the user or installed for the domain with ``sfeditor models``."""
from __future__ import annotations

import os
from pathlib import Path

from .e4e import is_e4e_file, load_e4e

__all__ = ["load_encoder", "photo_encoder_path"]


def load_encoder(path: str | os.PathLike, G=None, map_location="cpu"):
    """An initial-guess encoder file of either kind: an sfeditor toy encoder or an official e4e/pSp checkpoint."""
    from .toy_encoder import LooksLikeE4E, load_toy_encoder

    try:
        return load_toy_encoder(path, map_location=map_location, G=G)
    except LooksLikeE4E:
        return load_e4e(path, G=G, map_location=map_location)
    except ValueError:
        if not is_e4e_file(path):      # e4e views share storage: the toy reader's size check refuses them
            raise
        return load_e4e(path, G=G, map_location=map_location)


def photo_encoder_path(domain: str | None, generator_source: str | os.PathLike | None = None,
                       explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Which encoder starts the projector for a model -> (path or None, where it came from).

    ``explicit`` (``--encoder`` or the editor's setting) first; then the e4e encoder
    installed for the model's domain with ``sfeditor models`` (its checksum verified;
    the domain of an installed generator file is known from the registry); then a
    shipped domain's toy encoder; else None (the projector starts from the mean w).
    """
    from ..model.registry import encoder_domain, registered_encoder
    from .toy_encoder import default_encoder_path

    if explicit:
        return Path(os.fspath(explicit)), "given"
    dom = encoder_domain(domain, generator_source)
    path = registered_encoder(dom)
    if path is not None:
        return path, f"installed for {dom}"
    path = default_encoder_path(domain) if domain else None
    return (path, "shipped") if path is not None else (None, "none")


# ============================================================ w+ files
