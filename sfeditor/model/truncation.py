"""Truncation ψ per domain (paper, appendix A.6).

"During training, we sample latent codes by generating a random noise and passing it through the
StyleGAN's pretrained mapping network. We then use a truncation of 0.7 for the human facial domain
and 0.5 for the cars and churches domains."  The official code applies ψ to every layer against
``mean_latent(4096)`` (reference-facts.md), which is what ``Generator.mapping(z, ψ)`` does.

:func:`truncation_for` is the one place that decides the default ψ for training
(``sfeditor-train fusion``/``regions``), evaluation and the editor; ``--truncation``
(or the editor's ψ control) overrides it.
"""
from __future__ import annotations

import os

__all__ = ["PAPER_TRUNCATION", "paper_domain", "truncation_for", "domain_truncation"]

# A.6: faces 0.7; cars and churches 0.5.  Keys are the domain names of `sfeditor models`.
PAPER_TRUNCATION: dict[str, float] = {"ffhq": 0.7, "car": 0.5, "church": 0.5}
_ALIASES = {"ffhq": "ffhq", "face": "ffhq", "faces": "ffhq", "human": "ffhq",
            "car": "car", "cars": "car", "lsun-car": "car", "lsun-cars": "car",
            "church": "church", "churches": "church", "lsun-church": "church", "lsun-churches": "church"}


def paper_domain(name: str | None) -> str | None:
    """The paper domain (``"ffhq"``, ``"car"``, ``"church"``) a domain name stands for, else None."""
    if not name:
        return None
    return _ALIASES.get(str(name).strip().lower().replace("_", "-"))


def truncation_for(domain: str | None, generator_source: str | os.PathLike | None = None,
                   default: float = 1.0) -> tuple[float, str]:
    """(ψ, where it comes from) for a model: a shipped domain's value (which copies A.6), the paper's
    value for faces / cars / churches (by domain name, or by the domain an installed generator file was
    registered with in ``sfeditor models``), else ``default``."""
    from ..domains import SHIPPED

    if domain in SHIPPED:
        return SHIPPED[domain].truncation, f"shipped domain {domain} (paper A.6)"
    paper = paper_domain(domain)
    if paper is None and generator_source is not None:
        from .registry import domain_of_file

        paper = paper_domain(domain_of_file(generator_source))
    if paper is not None:
        return PAPER_TRUNCATION[paper], f"paper A.6 for {paper}"
    return float(default), f"no paper value for {domain or 'this generator'!s}"


def domain_truncation(domain: str | None, generator_source: str | os.PathLike | None = None,
                      default: float = 1.0) -> float:
    """ψ of :func:`truncation_for` without its explanation."""
    return truncation_for(domain, generator_source, default)[0]
