"""sfeditor: an editor and trainer for StyleFusion (Kafri et al.), Qt-free core."""
from __future__ import annotations

__version__ = "0.1.0"

from .model.checkpoints import CheckpointError, load_generator, read_checkpoint, save_generator
from .model.generator import Generator, GeneratorConfig
from .model.style_code import StyleCode, StyleLayout

__all__ = ["CheckpointError", "Generator", "GeneratorConfig", "StyleCode", "StyleLayout", "load_generator",
           "read_checkpoint", "save_generator", "__version__"]
