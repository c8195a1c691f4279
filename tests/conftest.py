"""Every Qt test runs headless unless the caller chose a platform (``QT_QPA_PLATFORM``)."""
import os
import sys
from pathlib import Path

# shared test helpers (tiny generators, checkpoint writers) live in tests/ beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
