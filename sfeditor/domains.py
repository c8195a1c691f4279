"""Shipped domains and where their files live (``resources/``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def resources_dir() -> Path:
    """The ``resources/`` folder (repository checkout or installed package)."""
    env = os.environ.get("SFEDITOR_RESOURCES")
    if env:
        return Path(env)
    try:
        import resources as _res  # installed alongside sfeditor

        return Path(_res.__file__).resolve().parent
    except ImportError:  # pragma: no cover - source tree without install
        return Path(__file__).resolve().parent.parent / "resources"


@dataclass(frozen=True)
class Domain:
    """A named domain: its generator file, default truncation (paper A.6), regions file, and the
    projector steps and learning rate that reach issue 6's target on its generator (BENCHMARKS.md,
    "Inversion presets"; 0 = the small-generator preset's)."""

    name: str
    truncation: float
    generator_file: str
    regions_file: str | None = None
    description: str = ""
    inversion_steps: int = 0
    inversion_lr: float = 0.0

    @property
    def generator_path(self) -> Path:
        return resources_dir() / self.generator_file


SHIPPED: dict[str, Domain] = {
    "toy-faces": Domain("toy-faces", 0.7, "generators/toy-faces.pt", "regions/toy-faces.json",
                        "procedural portraits: bg, hair, clothes, skin, eyes, mouth", inversion_steps=300),
    "toy-cars": Domain("toy-cars", 0.5, "generators/toy-cars.pt", "regions/toy-cars.json",
                       "procedural cars: background_top, background_bottom, car_body, wheels", inversion_steps=500,
                       inversion_lr=0.2),
}


def get_domain(name: str) -> Domain:
    try:
        return SHIPPED[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; shipped domains: {', '.join(SHIPPED)}") from None
