"""Long work as cancellable jobs with progress and ETA in the status bar.

A part of :class:`sfeditor.ui.main_window.MainWindow` (a mixin: its methods use the window's widgets
and session); views only, the work itself is in the core."""
from __future__ import annotations

import time


from .workers import Job
from .window_common import _duration


class JobsMixin:
    def start_job(self, kind: str, fn, text: str, status: bool = True, *, done=None, failed=None, partial=None,
                  finished=None) -> Job:
        """Start a job of ``kind`` (a newer job of the same kind cancels the older one).  The callbacks
        are connected before the thread starts, so a job that ends at once still reports."""
        self.cancel_job(kind)
        job = Job(fn, self.dispatcher, kind)   # no Qt parent: it lives until its thread ends
        self.jobs[kind] = job
        self._running.add(job)
        job.finished.connect(lambda: self._running.discard(job))
        for sig, cb in ((job.done, done), (job.failed, failed), (job.partial, partial), (job.finished, finished)):
            if cb is not None:
                sig.connect(cb)
        if status:
            self._status_jobs.append((job, text))
            self._show_status_job()
            job.progress.connect(lambda st, tot, info, j=job:
                                 j is self.status_job() and self._job_progress(st, tot, info))

        def finished():
            if self.jobs.get(kind) is job:
                del self.jobs[kind]
            if status:
                self._status_jobs = [(j, t) for j, t in self._status_jobs if j is not job]
                self._show_status_job()
        job.finished.connect(finished)
        if status:     # background overlays are cancelled on every edit: no message for those
            job.cancelled.connect(lambda: self.statusBar().showMessage(f"{text}: cancelled", 4000))
        return job.start()

    def status_job(self) -> Job | None:
        """The job the status bar shows (the newest running one); its Cancel cancels only this job."""
        return self._status_jobs[-1][0] if self._status_jobs else None

    def _show_status_job(self) -> None:
        job = self.status_job()
        if job is None:
            self.job_bar.setVisible(False)
            self.job_cancel.setVisible(False)
            self.job_label.setText("")
            return
        self.job_label.setText(self._status_jobs[-1][1])
        self.job_bar.setRange(0, 0)
        self.job_bar.setFormat("%p%")
        self.job_bar.setVisible(True)
        self.job_cancel.setVisible(True)
        self.job_cancel.setToolTip(f"Cancel: {self._status_jobs[-1][1]}")

    def cancel_status_job(self) -> None:
        """The status bar's Cancel: the job it shows, not the others (nor the overlays)."""
        job = self.status_job()
        if job is not None:
            job.cancel()

    def _job_progress(self, step: int, total: int, info: dict) -> None:
        if total > 0:
            self.job_bar.setRange(0, total)
            self.job_bar.setValue(step)
        parts = ["%v/%m" if total > 0 else ""]
        if "psnr" in info:
            parts.append(f"{info['psnr']:.1f} dB")
        if "eta_s" in info:
            parts.append(f"~{_duration(info['eta_s'])} left")
        self.job_bar.setFormat(" · ".join(p for p in parts if p) or "%p%")
        self.job_bar.setToolTip(self.job_bar.format().replace("%v", str(step)).replace("%m", str(total)))

    def cancel_job(self, kind: str) -> None:
        job = self.jobs.get(kind)
        if job is not None:
            job.cancel()

    def cancel_jobs(self) -> None:
        for job in list(self._running):
            job.cancel()

    def wait_for_jobs(self, timeout: float = 60.0) -> bool:
        """Block until running jobs end (tests, shutdown)."""
        end = time.time() + timeout
        for job in list(self._running):
            if not job.wait(max(0.0, end - time.time())):
                return False
        return True
