"""Every Qt test runs headless unless the caller chose a platform (``QT_QPA_PLATFORM``)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
