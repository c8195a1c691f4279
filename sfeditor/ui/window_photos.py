"""Photos: inversion into nodes, the off-domain check, hair / region transfer (paper Sec. 6).

A part of :class:`sfeditor.ui.main_window.MainWindow` (a mixin: its methods use the window's widgets
and session); views only, the work itself is in the core."""
from __future__ import annotations

from pathlib import Path

import torch
from PySide6.QtWidgets import QDialog, QFileDialog, QMessageBox

from ..editor.session import EditorSession, SessionError
from .transfer_dialog import IMAGE_FILTER, TransferDialog
from .workers import Job
from .window_common import PHOTO_SUFFIXES


class PhotosMixin:
    def choose_photo_for(self, node: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"Photo for {node or 'all nodes'}", "", IMAGE_FILTER)
        if path:
            self.open_paths(node, [path])

    def open_paths(self, node: str, paths: list, dialog: bool = False) -> None:
        """Files dropped on a node ("" = the canvas / preview) or chosen in File ▸ Open (``dialog``): a
        composition (JSON or a PNG made by sfeditor) is opened (File ▸ Open) or restored as one undoable
        edit (a drop); any other image is inverted and assigned (the same path for both)."""
        for path in paths[:1]:
            p = Path(path)
            if p.suffix.lower() == ".json" or p.name.endswith(".sfcomp.json"):
                self.open_composition(p)
                return
            if p.suffix.lower() == ".png":
                try:
                    comp = EditorSession.read_composition(p)
                except SessionError:
                    comp = None
                if comp is not None:
                    if dialog:
                        self.open_composition(p)
                    else:
                        self.apply_composition(comp, p, as_edit=True)
                    return
            if p.suffix.lower() not in PHOTO_SUFFIXES:
                self.show_error("Unsupported file", f"{p.name}: not an image or a composition "
                                f"(images: {', '.join(sorted(PHOTO_SUFFIXES))})")
                return
            self.invert_photo(p, node)
        if len(paths) > 1:
            self.statusBar().showMessage(f"{len(paths) - 1} more file(s) ignored: drop one photo at a time", 6000)

    def _inversion_fn(self, path: Path):
        """A job function: read, align/crop and invert ``path`` -> an InversionResult whose
        ``domain_verdict`` (:func:`sfeditor.images.domain_check.judge_inversion`) says whether the photo
        looks like the model's domain."""
        from ..images.alignment import prepare_image
        from ..images.intake import read_image
        from ..images.inversion import InversionCache, InversionSettings, Projector

        b = self.session.bundle

        def work(report, cancel):
            img = read_image(path)
            prep = prepare_image(img, b.G.size, b.domain)
            if self._encoder is None or self._encoder[0] is not b:      # read once per model (and choice)
                self._encoder = (b, self._load_photo_encoder(b))
            proj = Projector(b.G, InversionSettings.for_generator(b.G, b.domain), encoder=self._encoder[1],
                             cache=InversionCache())
            res = proj.invert(prep.image, progress=report, cancel=cancel)
            from ..images.domain_check import judge_inversion
            from ..images.imageio import to_uint8

            with torch.no_grad():
                rec = to_uint8(res.render(b.G))[0]
            res.domain_verdict = judge_inversion(b.domain, prep.image, rec, res.psnr)
            return res
        return work

    def confirm_off_domain(self, what: str, messages: list[str]) -> bool:
        """Tell the user plainly that a photo does not look like the domain, before its code is used;
        True = use it anyway.  (Tests patch ``QMessageBox.warning``.)"""
        B = QMessageBox.StandardButton
        r = QMessageBox.warning(self, "Photo does not look like the domain",
                                "\n\n".join(messages) + f"\n\nUse it for {what} anyway?", B.Yes | B.No, B.No)
        return r == B.Yes

    def _judged(self, results: list, what: str) -> bool:
        """Record the verdicts of these inversions; ask before using an off-domain one."""
        verdicts = [getattr(r, "domain_verdict", None) for r in results if r is not None]
        verdicts = [v for v in verdicts if v is not None]
        if verdicts:
            self.last_domain_verdicts = verdicts
        bad = [v.message() for v in verdicts if not v.ok]
        if not bad:
            return True
        self.preview.set_message("photo does not look like the domain: " + verdicts[0].summary())
        if self.confirm_off_domain(what, bad):
            return True
        self.statusBar().showMessage(f"{what}: not used (the photo does not look like the domain)", 8000)
        return False

    def invert_photo(self, path: Path, node: str) -> Job:
        return self.start_job("invert", self._inversion_fn(path), f"Inverting {path.name}",
                              done=lambda res: self._photo_inverted(res, node, path),
                              failed=lambda m: self.show_error("Photo", f"{path.name}: {m}"))

    def _photo_inverted(self, res, node: str, path: Path) -> None:
        if not self._judged([res], f"{path.name} -> {node or 'all nodes'}"):
            return
        if self._do(lambda s: s.assign_photo(node or None, res.w_plus, f"photo {path.name}")):
            how = "cached" if res.from_cache else f"{res.seconds:.1f} s"
            v = getattr(res, "domain_verdict", None)
            judged = f"; {v.summary()}" if v is not None else ""
            self.statusBar().showMessage(f"{path.name}: inverted ({res.psnr:.1f} dB PSNR, {how}) "
                                         f"-> {node or 'all nodes'}{judged}", 8000)

    def transfer_dialog(self) -> None:
        leaves = [n for n in self.session.composition.node_names if n != self.session.composition.tree.name]
        d = TransferDialog(leaves, "hair", self, current_image=self.preview.frame())
        if d.exec() != QDialog.DialogCode.Accepted:
            return
        target, reference, region = d.choice()
        self.transfer(target, reference, region)

    def transfer(self, target: str | None, reference: str, region: str) -> Job:
        ref_fn = self._inversion_fn(Path(reference))
        tgt_fn = self._inversion_fn(Path(target)) if target else None

        def work(report, cancel):
            ref = ref_fn(lambda i, n, info: report(i, 2 * n if tgt_fn else n, info), cancel)
            tgt = tgt_fn(lambda i, n, info: report(n + i, 2 * n, info), cancel) if tgt_fn else None
            return ref, tgt

        return self.start_job("invert", work, f"Transfer {region}: inverting",
                              done=lambda r: self._judged(list(r), f"the {region} transfer") and self._do(
                                  lambda s: s.transfer_region(region, r[0].w_plus,
                                                              None if r[1] is None else r[1].w_plus,
                                                              label=f"transfer from {Path(reference).name}")),
                              failed=lambda m: self.show_error("Transfer", m))
