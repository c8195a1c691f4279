"""Background renderer: newest request wins, stale work dropped, errors captured."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from editor_core_helpers import TREE2, composition, tiny_generator, tiny_hierarchy
from sfeditor.editor.commands import AssignCode, SetCollapsed, SetLocked, SetSeed, SetTruncation, UndoStack
from sfeditor.editor.composition import NodeState
from sfeditor.images.imageio import to_uint8
from sfeditor.editor.render_service import (NO_HIERARCHY_NOTE, CodeCache, RenderRequest, RenderResult, RenderService,
                                     render_request)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def G():
    return tiny_generator()


@pytest.fixture(scope="module")
def H(G):
    return tiny_hierarchy(G)


@pytest.fixture
def service(G, H):
    results = []
    s = RenderService(G, H, on_result=results.append)
    s.results = results
    yield s
    s.close()
    assert not s._thread.is_alive()


def reference(G, H, comp) -> np.ndarray:
    """Direct synchronous render, written out without the service's code."""
    with torch.no_grad():
        codes = {n: G.styles(G.sample_w(1, seed=st.seed, truncation=comp.truncation) if st.code is None
                             else st.code) for n, st in comp.nodes.items()}
        fused = H(codes, comp.collapsed_nodes(), use_cache=False) if H is not None else codes[comp.tree.name]
        return to_uint8(G.synthesis(fused))[0]


def test_single_render_matches_reference(service, G, H):
    comp = composition()
    stamp = service.submit(comp)
    assert service.wait_until_idle()
    r = service.latest
    assert r.ok and r.stamp == stamp and r.hierarchy_used and r.note == ""
    assert r.image.dtype == np.uint8 and r.image.shape == (16, 16, 3)
    assert np.array_equal(r.image, reference(G, H, comp))
    assert r.render_ms > 0
    assert service.results == [r]


def test_only_changed_path_is_recomputed(service):
    comp = composition()
    service.submit(comp)
    service.wait_until_idle()
    assert set(service.latest.recomputed_nodes) == {"left", "right", "all"}
    service.submit(comp)
    service.wait_until_idle()
    assert service.latest.recomputed_nodes == ()
    comp.set_state("c", NodeState(seed=999))
    service.submit(comp)
    service.wait_until_idle()
    assert service.latest.recomputed_nodes == ("right", "all")
    # an explicit code keeps its identity through edits that do not change it
    stack = UndoStack(comp)
    stack.push(AssignCode("a", torch.randn(1, 16)))
    service.submit(comp)
    service.wait_until_idle()
    assert service.latest.recomputed_nodes == ("left", "all")
    stack.push(SetLocked("a"))
    stack.undo()
    stack.redo()
    service.submit(comp)
    service.wait_until_idle()
    assert service.latest.recomputed_nodes == ()


def test_collapsed_node_bypasses(service, G, H):
    stack = UndoStack(composition())
    stack.push(SetCollapsed("left"))
    service.submit(stack.composition)
    service.wait_until_idle()
    assert "left" not in service.latest.recomputed_nodes
    assert np.array_equal(service.latest.image, reference(G, H, stack.composition))


def test_snapshot_is_taken_at_submit(G, H):
    gate = threading.Event()

    def slow(req):
        gate.wait(5)
        return render_request(G, H, req)

    comp = composition()
    expected = reference(G, H, comp)
    with RenderService(G, H, render_fn=slow) as s:
        s.submit(comp)
        comp.set_state("a", NodeState(seed=4242))       # edited while the render waits
        comp.set_truncation(1.0)
        gate.set()
        s.wait_until_idle()
        assert np.array_equal(s.latest.image, expected)


def test_stress_newest_wins(G, H):
    """200 rapid edits: the last delivered result is the last request's, and most were never rendered."""
    rendered = []

    def slow(req):
        rendered.append(req.stamp)
        time.sleep(0.01)
        return render_request(G, H, req, cache)

    cache = CodeCache()
    delivered = []
    stack = UndoStack(composition())
    with RenderService(G, H, on_result=delivered.append, render_fn=slow) as s:
        last = None
        for i in range(200):
            if i % 3 == 0:
                stack.push(SetTruncation(0.5 + (i % 50) / 100))
            else:
                stack.push(SetSeed("abcd"[i % 4], 1000 + i))
            last = s.submit(stack.composition)
            if i % 50 == 49:
                time.sleep(0.03)                       # let a few renders run mid-storm
        assert s.wait_until_idle(30)
        assert s.latest.stamp == last and delivered[-1].stamp == last
        assert np.array_equal(s.latest.image, reference(G, H, stack.composition))
        assert len(rendered) < 20, len(rendered)
        assert s.renders == len(rendered) and s.superseded == 200 - len(rendered)
        assert rendered == sorted(rendered)
        stamps = [r.stamp for r in delivered]
        assert stamps == sorted(set(stamps))           # never an older result after a newer one


def test_stale_results_are_dropped(G):
    """A render function that finishes with an old stamp (e.g. a late result) is not delivered."""
    delivered = []
    script = iter([5, 3, 7])

    def fake(req):
        return RenderResult(next(script), np.zeros((1, 1, 3), np.uint8), 0.0)

    with RenderService(G, on_result=delivered.append, render_fn=fake) as s:
        for _ in range(3):
            s.submit(composition())
            s.wait_until_idle()
        assert [r.stamp for r in delivered] == [5, 7] and s.stale == 1 and s.latest.stamp == 7


def test_errors_come_back_as_text(G, H):
    delivered = []
    with RenderService(G, H, on_result=delivered.append) as s:
        bad = composition()
        bad.set_state("a", NodeState(code=torch.zeros(1, 7)))        # wrong width for this generator
        stamp = s.submit(bad)
        s.wait_until_idle()
        r = s.latest
        assert r.stamp == stamp and not r.ok and r.image is None
        assert "ValueError" in r.error_text and "w must be" in r.error_text
        # the worker survives and renders the next request
        s.submit(composition())
        s.wait_until_idle()
        assert s.latest.ok and len(delivered) == 2

    def boom(req):
        raise RuntimeError("kaboom")

    with RenderService(G, H, render_fn=boom) as s:
        s.submit(composition())
        s.wait_until_idle()
        assert "RuntimeError: kaboom" in s.latest.error_text


def test_tree_mismatch_is_an_error(G, H):
    with RenderService(G, H) as s:
        s.submit(composition(tree=TREE2))
        s.wait_until_idle()
        assert "lacks" in s.latest.error_text or "not in the hierarchy" in s.latest.error_text


def test_without_hierarchy_renders_root_code(G):
    with RenderService(G, None) as s:
        comp = composition()
        s.submit(comp)
        s.wait_until_idle()
        r = s.latest
        assert r.ok and not r.hierarchy_used and r.note == NO_HIERARCHY_NOTE
        assert np.array_equal(r.image, reference(G, None, comp))


def test_observer_errors_do_not_kill_worker(G, capsys):
    def bad_observer(r):
        raise RuntimeError("observer bug")

    with RenderService(G, on_result=bad_observer) as s:
        s.submit(composition())
        assert s.wait_until_idle()
        s.submit(composition())
        assert s.wait_until_idle()
        assert s.renders == 2
    assert "observer bug" in capsys.readouterr().err


def test_close(G):
    s = RenderService(G)
    s.close()
    s.close()                                             # idempotent
    assert s.closed and not s._thread.is_alive()
    with pytest.raises(RuntimeError):
        s.submit(composition())
    assert s.wait_until_idle(1)


def test_request_is_frozen():
    req = RenderRequest(composition(), 1)
    with pytest.raises(Exception):
        req.stamp = 2


def test_core_does_not_import_qt():
    import subprocess
    import sys

    code = ("import sys, sfeditor.editor.composition, sfeditor.editor.commands, sfeditor.editor.render_service; "
            "print([m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'qtpy')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_thumbnails_are_each_nodes_own_image_and_cached(G, H):
    got: dict[str, np.ndarray] = {}
    renders = []
    svc = RenderService(G, H, on_thumbnail=lambda n, img: got.__setitem__(n, img))
    orig = G.synthesis

    try:
        comp = composition()
        svc.submit(comp)
        assert svc.wait_until_idle(30)
        assert set(got) == set(comp.node_names)
        for n in comp.node_names:
            with torch.no_grad():
                want = to_uint8(G.synthesis(G.styles(comp.w_for(n, G)), noise_mode="const"))[0]
            assert np.array_equal(got[n], want), n
        # a second frame with one node changed renders (and hands over) one new thumbnail only
        G.synthesis = lambda *a, **k: (renders.append(1), orig(*a, **k))[1]
        got.clear()
        comp.set_state("a", NodeState(seed=999))
        svc.submit(comp)
        assert svc.wait_until_idle(30)
        assert len(renders) == 2 and list(got) == ["a"]     # the frame + a's thumbnail
    finally:
        G.__dict__.pop("synthesis", None)      # back to the class method
        svc.close()


def test_render_once_and_composition_labels_work_on_a_private_copy(G, H):
    """The window's one-shot jobs (compare frame, region masks) go through the core, never touching the
    hierarchy the render worker uses."""
    from sfeditor.editor.render_service import composition_labels, render_once
    from sfeditor.model.identity import generator_identity
    from sfeditor.regions.masks import RegionModel
    from sfeditor.regions.regions_file import RegionsFile

    comp = composition()
    before = {k: v.clone() for k, v in H.state_dict().items()}
    assert np.array_equal(render_once(G, H, comp), reference(G, H, comp))
    assert all(torch.equal(before[k], v) for k, v in H.state_dict().items())
    with torch.no_grad():
        dp = G.deep_pixels(G.random_styles(2, seed=3), size=G.size)
    x = dp.permute(0, 2, 3, 1).reshape(-1, dp.shape[1])
    leaves = [n.name for n in comp.tree.walk() if n.is_leaf]
    regions = RegionsFile(domain="tiny", generator=generator_identity(G), centroids=x[:4].numpy(),
                          clusters={i: leaves[i % len(leaves)] for i in range(4)}, tree=comp.tree,
                          deep_pixel_size=G.size, temperature=1.0)
    model = RegionModel(G, regions)
    labels = composition_labels(G, H, model, comp)
    with torch.no_grad():
        need = H.required_codes(comp.collapsed_nodes())
        fused = H({n: comp.code_for(n, G) for n in need}, comp.collapsed_nodes(), use_cache=False)
    assert labels.shape == (G.size, G.size) and np.array_equal(labels, model.hard_labels(fused)[0].numpy())
