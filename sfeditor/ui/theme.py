"""Dark (qdarkstyle) and light themes."""
from __future__ import annotations

from PySide6.QtWidgets import QApplication

__all__ = ["apply_theme", "DARK_BG", "LIGHT_BG"]

DARK_BG = "#19232D"     # qdarkstyle's dark background
LIGHT_BG = "#FAFAFA"


def apply_theme(app: QApplication, dark: bool = True) -> None:
    """qdarkstyle's dark or light palette for the whole application."""
    import qdarkstyle

    palette = qdarkstyle.DarkPalette if dark else qdarkstyle.LightPalette
    app.setStyleSheet(qdarkstyle.load_stylesheet(qt_api="pyside6", palette=palette))
