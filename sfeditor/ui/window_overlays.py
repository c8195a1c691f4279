"""Locality heatmaps, region masks and the compare view (paper Sec. 5, Fig. 10-11).

A part of :class:`sfeditor.ui.main_window.MainWindow` (a mixin: its methods use the window's widgets
and session); views only, the work itself is in the core."""
from __future__ import annotations



from .window_common import HEATMAP_SAMPLES, HEATMAP_RESOLUTION, HEATMAP_SAMPLES_LARGE


class OverlaysMixin:
    def show_heatmap_for(self, name: str) -> None:
        self.graph.select(name)
        self.preview.set_overlay_mode("heatmap")
        self.refresh_overlay()

    def refresh_overlay(self) -> None:
        """(Re)start the overlay job for the current mode, selection and composition."""
        self._overlay_timer.stop()          # this refresh supersedes a pending debounced one (no second job)
        self.cancel_job("overlay")
        mode = self.preview.overlay_mode()
        if self.session is None or mode == "none":
            self.preview.set_progress(0, 0)
            return
        if mode == "heatmap":
            self._start_heatmap()
        else:
            self._start_masks()

    def _start_heatmap(self) -> None:
        from ..editor.locality import locality_heatmap

        b, comp = self.session.bundle, self.session.composition.snapshot()
        sel = self.selected()
        node = sel[0] if sel else comp.tree.name
        base = self.preview.heatmap_mode()
        # a large model's map is computed on 256 px drafts (stretched over the frame), when its first
        # frame showed that they stand in for it (RenderService.low_resolution_ok)
        res = HEATMAP_RESOLUTION if b.G.size > HEATMAP_RESOLUTION \
            and self.bridge.service.low_resolution_ok(HEATMAP_RESOLUTION) is True else None
        samples = HEATMAP_SAMPLES if res is None else HEATMAP_SAMPLES_LARGE

        def work(report, cancel):
            return locality_heatmap(b.G, b.hierarchy, comp, node, base, samples=samples,
                                    batch=8 if b.G.size <= 128 else 1, cancel=cancel, max_resolution=res,
                                    region_model=b.region_model)

        def title(u) -> str:     # the union reading (sfeditor.editor.locality), when the model has a regions file
            text = f"{node}: mean |Δ| when its code is resampled"
            if u.locality == u.locality:
                text += (f" · locality {u.locality:.2f} (region of either image; base only "
                         f"{u.base_locality:.2f}) · change inside {u.region_change:.3f}")
            return text

        box: dict = {}

        def partial(u):
            job = box.get("job")
            if job is None or self.jobs.get("overlay") is not job or job.token.requested:
                return                          # a superseded or cancelled job's late map: not shown
            self._heatmap_shown = (job, u.done, u.total)
            self.preview.set_heatmap(u.values, title=title(u),
                                     status="" if u.done >= u.total else f"partial: {u.done}/{u.total} samples")
            self.preview.set_progress(u.done, u.total, f"{node}: {u.done}/{u.total}")
            if u.note:
                self.preview.set_message(u.note)

        def cancelled():
            shown = self._heatmap_shown
            if shown is None or shown[0] is not box.get("job") or shown[1] >= shown[2]:
                return
            newer = self.jobs.get("overlay") not in (None, box.get("job"))
            self.preview.set_heatmap_status("outdated: recomputing…" if newer else
                                            f"cancelled at {shown[1]}/{shown[2]} samples: partial")

        job = self.start_job("overlay", work, f"heatmap of {node}", status=False, partial=partial,
                             finished=lambda: (self.jobs.get("overlay") in (None, box.get("job"))
                                               and self.preview.set_progress(0, 0)),
                             failed=lambda m: self.preview.set_message(f"heatmap failed: {m}"))
        box["job"] = job
        job.cancelled.connect(cancelled)

    def _start_masks(self) -> None:
        b = self.session.bundle
        if b.region_model is None:
            self.preview.set_message("no regions file for this model: masks unavailable")
            return
        comp = self.session.composition.snapshot()

        def work(report, cancel):
            from ..editor.render_service import composition_labels

            return composition_labels(b.G, b.hierarchy, b.region_model, comp)

        self.start_job("overlay", work, "region masks", status=False,
                       done=lambda lab: self.preview.set_masks(lab, list(b.region_model.leaves)),
                       failed=lambda m: self.preview.set_message(f"masks failed: {m}"))

    def _update_compare(self) -> None:
        if self.edit_panel.active() and self._whole_frame is not None:
            self.preview.set_compare(self._whole_frame, "every node")
        elif self.edit_panel.active():
            self.preview.set_compare(self._committed_frame, "before edit")
        else:
            self.preview.set_compare(self._before_frame, "before")
