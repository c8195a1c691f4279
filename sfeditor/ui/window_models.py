"""Real models (issue 40): the photo encoder and File > Get models.

A part of :class:`sfeditor.ui.main_window.MainWindow` (a mixin: its methods use the window's widgets
and session); views only, the work itself is in the core."""
from __future__ import annotations


from PySide6.QtWidgets import QFileDialog

from ..editor.session import ModelBundle


class ModelsMixin:
    encoder_override: str | None = None      # `sfeditor gui --encoder FILE`: this run only

    def photo_encoder_key(self, b: ModelBundle | None = None) -> str:
        from ..model.registry import encoder_domain

        b = b or self.session.bundle
        return f"photo-encoder/{encoder_domain(b.domain, b.generator_source) or b.domain}"

    def photo_encoder_path(self, b: ModelBundle | None = None):
        """(path or None, where from): --encoder, else this domain's setting, else the e4e installed for it
        (``sfeditor models``), else the shipped toy encoder."""
        from ..images.encoders import photo_encoder_path

        b = b or self.session.bundle
        chosen = self.encoder_override or self.settings.value(self.photo_encoder_key(b), "", type=str) or None
        return photo_encoder_path(b.domain, b.generator_source, chosen)

    def _load_photo_encoder(self, b: ModelBundle):       # on the job's thread
        from ..images.encoders import load_encoder

        path, _how = self.photo_encoder_path(b)
        return load_encoder(path, G=b.G, map_location=b.device) if path is not None else None

    def set_photo_encoder(self, path: str | None) -> None:
        """Remember ``path`` as the photo encoder of the current model's domain (None: back to the default)."""
        key = self.photo_encoder_key()
        if path:
            self.settings.setValue(key, str(path))
        else:
            self.settings.remove(key)
        self._encoder = None                  # read again on the next photo
        found, how = self.photo_encoder_path()
        self.statusBar().showMessage(f"Photo encoder: {found.name if found else 'none (mean w start)'} ({how})", 6000)

    def choose_photo_encoder(self) -> None:
        current, how = self.photo_encoder_path()
        path, _ = QFileDialog.getOpenFileName(
            self, f"Photo encoder (now: {current.name if current else 'none'}, {how}); cancel keeps it",
            str(current.parent) if current else "", "Encoders (*.pt *.pth);;All files (*)")
        if path:
            self.set_photo_encoder(path)

    def get_models_dialog(self):
        from .models_dialog import ModelsDialog

        d = ModelsDialog(self, dispatcher=self.dispatcher)
        d.openRequested.connect(lambda spec: self.load_model_async(**spec))
        d.show()
        self._models_dialog = d
        return d
