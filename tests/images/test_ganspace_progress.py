"""GANSpace (issue 39): pca_directions reports progress while it samples and fits, and a cancel token
stops it between chunks (no result, nothing cached)."""
from __future__ import annotations

import pytest
import torch

from editor_core_helpers import tiny_generator
from sfeditor.images.directions import pca_directions
from sfeditor.jobs import CancelToken, Cancelled

torch.set_num_threads(1)


def test_progress_is_reported_per_chunk_and_after_the_fit(tmp_path):
    G = tiny_generator()
    seen = []
    pca_directions(G, n_components=4, n_samples=1000, batch=300, cache_dir=tmp_path,
                   progress=lambda i, n, stage: seen.append((i, n, stage)))
    assert [i for i, _, _ in seen] == [0, 1, 2, 3, 4, 5] and {n for _, n, _ in seen} == {5}
    assert seen[-1][2] == "PCA fitted"


def test_cancel_stops_between_chunks_and_caches_nothing(tmp_path):
    G = tiny_generator()
    token, seen = CancelToken(), []

    def progress(i, n, stage):
        seen.append(i)
        if i == 1:
            token.cancel()
    with pytest.raises(Cancelled):
        pca_directions(G, n_components=4, n_samples=1000, batch=300, cache_dir=tmp_path, progress=progress,
                       cancel=token)
    assert seen == [0, 1] and list(tmp_path.iterdir()) == []
