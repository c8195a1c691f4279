"""sfeditor: an editor and trainer for StyleFusion (Kafri et al.), Qt-free core."""
from __future__ import annotations

__version__ = "0.1.0"

from .generator import Generator, GeneratorConfig
from .style_code import StyleCode, StyleLayout

__all__ = ["Generator", "GeneratorConfig", "StyleCode", "StyleLayout", "__version__"]
