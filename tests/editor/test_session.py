"""The Qt-free editor session: model bundles, undoable intents, files, autosave, locality heatmaps."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from editor_core_helpers import tiny_generator, tiny_hierarchy
from sfeditor.editor.composition import Composition, extract_from_png
from sfeditor.jobs import Cancelled, CancelToken
from sfeditor.editor.locality import locality_heatmap
from sfeditor.editor.session import EditorSession, ModelBundle, SessionError, load_bundle


@pytest.fixture(scope="module")
def bundle():
    G = tiny_generator()
    return ModelBundle("tiny", G, hierarchy=tiny_hierarchy(G), truncation=0.7)


def session(bundle, seed=0):
    return EditorSession(bundle, rng=random.Random(seed))


def test_new_composition_covers_the_tree_and_is_reproducible(bundle):
    a, b = bundle.new_composition(3), bundle.new_composition(3)
    assert a.node_names == ["all", "left", "right", "a", "b", "c", "d"]
    assert a.same_as(b) and a.generator_fingerprint == bundle.fingerprint
    assert not a.same_as(bundle.new_composition(4))


def test_intents_are_undoable_entries(bundle):
    s = session(bundle)
    seed0 = s.composition.state("a").seed
    assert s.reroll("a") and s.composition.state("a").seed != seed0
    s.set_locked("b", True)
    s.copy_code("c", "d")
    assert s.composition.state("d").seed == s.composition.state("c").seed
    assert not s.copy_code("c", "c")
    assert len(s.stack) == 3
    assert s.undo() and s.undo() and s.undo()
    assert s.composition.state("a").seed == seed0 and not s.composition.state("b").locked
    assert s.redo() and s.composition.state("a").seed != seed0


def test_randomize_keeps_locked_nodes(bundle):
    s = session(bundle)
    s.set_locked("b", True)
    before = {n: st.seed for n, st in s.composition.nodes.items()}
    s.randomize_unlocked()
    after = {n: st.seed for n, st in s.composition.nodes.items()}
    assert after["b"] == before["b"]
    assert sum(after[n] != before[n] for n in before if n != "b") == len(before) - 1
    assert s.undo() and {n: st.seed for n, st in s.composition.nodes.items()} == before


def test_assign_photo_on_node_takes_its_subtree(bundle):
    s = session(bundle)
    w = torch.randn(1, bundle.G.n_latent, bundle.G.style_dim)
    s.assign_photo("left", w)
    got = {n for n, st in s.composition.nodes.items() if st.code is not None}
    assert got == {"left", "a", "b"}
    assert len(s.stack) == 1          # one undo entry
    s.undo()
    s.assign_photo(None, w)
    assert all(st.code is not None for st in s.composition.nodes.values())
    s.clear_code("a")
    assert s.composition.state("a").code is None


def test_transfer_region_reference_inside_target_outside(bundle):
    s = session(bundle)
    G = bundle.G
    ref, tgt = torch.randn(1, G.n_latent, G.style_dim), torch.randn(1, G.n_latent, G.style_dim)
    s.transfer_region("right", ref, tgt)
    for n, st in s.composition.nodes.items():
        want = ref if n in ("right", "c", "d") else tgt
        assert torch.equal(st.code, want)


def test_region_limited_direction_edit_and_preview(bundle):
    s = session(bundle)
    G = bundle.G
    d = torch.randn(G.style_dim).numpy()
    preview = s.preview_direction(d, 2.0, ["a"])
    assert s.composition.state("a").code is None          # preview changes nothing
    assert preview.state("a").code is not None and preview.state("b").code is None
    w0 = s.node_w_plus("a")
    assert s.apply_direction(d, 2.0, ["a"])
    moved = s.composition.state("a").code
    assert torch.allclose(moved - w0, 2.0 * torch.as_tensor(d).float().expand_as(w0), atol=1e-5)
    assert all(s.composition.state(n).code is None for n in ("b", "c", "d", "all"))
    s.undo()
    assert s.apply_direction(d, 1.0, None)
    assert all(st.code is not None for st in s.composition.nodes.values())


def test_edit_hidden_by_collapsed_ancestor_is_refused(bundle):
    s = session(bundle)
    s.set_collapsed("left", True)
    assert s.bypassed_by("a") == "left"
    with pytest.raises(SessionError, match="collapsed node 'left'"):
        s.apply_direction(np.ones(bundle.G.style_dim, np.float32), 1.0, ["a"])


def test_save_open_png_roundtrip(bundle, tmp_path):
    s = session(bundle)
    s.reroll("a")
    s.assign_photo("c", torch.randn(1, bundle.G.n_latent, bundle.G.style_dim))
    assert s.dirty
    p = s.save(tmp_path / "c.sfcomp.json")
    assert not s.dirty and s.title().startswith("c.sfcomp.json")
    back = EditorSession.read_composition(p)
    assert back.same_as(s.composition)
    img = np.zeros((16, 16, 3), np.uint8)
    png = s.export_png(tmp_path / "x.png", img)
    assert extract_from_png(png.read_bytes()).same_as(s.composition)
    assert EditorSession.read_composition(png).same_as(s.composition)
    s2 = session(bundle, 5)
    s2.replace_composition(back, p)
    assert s2.composition.same_as(s.composition) and not s2.stack.can_undo()


def test_bad_composition_files_give_clear_errors(bundle, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SessionError, match="bad.json"):
        EditorSession.read_composition(bad)
    with pytest.raises(SessionError, match="cannot read"):
        EditorSession.read_composition(tmp_path / "missing.json")
    other = Composition({"name": "all", "children": ["x", "y"]})
    with pytest.raises(SessionError, match="tree differs"):
        session(bundle).replace_composition(other)
    wrong = bundle.new_composition(1)
    from dataclasses import replace
    wrong.set_state("a", replace(wrong.state("a"), code=torch.zeros(1, 7)))
    with pytest.raises(SessionError, match="does not fit"):
        session(bundle).replace_composition(wrong)


def test_autosave_and_recovery(bundle, tmp_path):
    s = session(bundle)
    s.reroll("a")
    p = s.autosave(tmp_path)
    assert EditorSession.recovery_files(tmp_path) == [p]
    assert EditorSession.read_composition(p).same_as(s.composition)
    s.discard_autosave(tmp_path)
    assert EditorSession.recovery_files(tmp_path) == []


def test_load_bundle_errors_name_the_file(tmp_path):
    with pytest.raises(SessionError, match="unknown domain"):
        load_bundle("no-such-domain", device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(SessionError, match="junk.pt"):
        load_bundle(generator=junk, device="cpu")


def test_load_shipped_domain():
    b = load_bundle("toy-cars", device="cpu")
    assert b.regions is not None and set(b.tree.to_dict()["children"][0]["children"]) == {"car_body", "wheels"}
    comp = b.new_composition(0)
    assert set(comp.leaves) == {"car_body", "wheels", "background_top", "background_bottom"}


@pytest.mark.parametrize("domain", ["toy-faces", "toy-cars"])
def test_shipped_domains_sample_through_their_mixture_prior_and_their_files_fit(domain):
    b = load_bundle(domain, device="cpu")
    assert b.G.prior is not None and b.G.prior.n_components > 1
    assert not b.notes, b.notes                     # the regions file and hierarchy fit the generator
    z = torch.randn(64, b.G.style_dim, generator=torch.Generator().manual_seed(0))
    k, _ = b.G.prior.components(z)
    w = b.G.mapping(z, b.truncation)
    assert torch.allclose(w, b.G.prior.means[k] + b.truncation * (b.G.prior(z) - b.G.prior.means[k]), atol=1e-5)
    assert len(set(k.tolist())) > 8                 # the samples spread over many modes


# ---------------------------------------------------------------- locality
def test_locality_heatmap_fixed_is_progressive_and_local_to_changes(bundle):
    comp = bundle.new_composition(0)
    ups = list(locality_heatmap(bundle.G, bundle.hierarchy, comp, "a", "fixed", samples=6, batch=2))
    assert [u.done for u in ups] == [2, 4, 6] and ups[-1].total == 6
    assert ups[-1].values.shape == (16, 16) and ups[-1].values.dtype == np.float32
    assert ups[-1].values.max() > 0
    # a node hidden under a collapsed parent changes nothing
    comp.set_state("left", comp.state("left").__class__(seed=1, collapsed=True))
    up = list(locality_heatmap(bundle.G, bundle.hierarchy, comp, "a", "fixed", samples=2, batch=2))[-1]
    assert up.values.max() == 0 and "not used" in up.note


def test_locality_heatmap_matches_direct_computation(bundle):
    G, h = bundle.G, bundle.hierarchy
    comp = bundle.new_composition(2)
    got = list(locality_heatmap(G, h, comp, "c", "fixed", samples=3, batch=3, seed=9))[-1].values
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        codes = {n: comp.code_for(n, G) for n in comp.node_names}
        base = G.synthesis(h(codes, use_cache=False))
        diffs = []
        for _ in range(1):
            w = G.sample_w(3, truncation=comp.truncation, generator=gen)
            for i in range(3):
                c = dict(codes)
                c["c"] = G.styles(w[i:i + 1])
                diffs.append((G.synthesis(h(c, use_cache=False)) - base).abs().mean(1)[0])
    assert np.allclose(got, torch.stack(diffs).mean(0).numpy(), atol=1e-5)


def test_locality_heatmap_random_mode_and_cancel(bundle):
    comp = bundle.new_composition(0)
    ups = list(locality_heatmap(bundle.G, bundle.hierarchy, comp, "right", "random", samples=4, batch=2))
    assert ups[-1].values.max() > 0
    tok = CancelToken()
    it = locality_heatmap(bundle.G, bundle.hierarchy, comp, "a", "fixed", samples=10, batch=2, cancel=tok)
    next(it)
    tok.cancel()
    with pytest.raises(Cancelled):
        next(it)
    with pytest.raises(ValueError, match="mode"):
        next(locality_heatmap(bundle.G, bundle.hierarchy, comp, "a", "sideways"))


def test_restore_is_one_undo_entry(bundle):
    s = session(bundle)
    other = bundle.new_composition(11)
    other.set_truncation(0.4)
    before = s.composition.snapshot()
    assert s.restore(other)
    assert {n: st.seed for n, st in s.composition.nodes.items()} == {n: st.seed for n, st in other.nodes.items()}
    assert s.composition.truncation == 0.4 and len(s.stack) == 1
    s.undo()
    assert s.composition.same_as(before)


def test_hierarchy_for_another_generator_is_noted(bundle, tmp_path):
    from sfeditor.model.checkpoints import save_generator
    from sfeditor.fusion.hierarchy import load_hierarchy

    save_generator(bundle.G, tmp_path / "g.pt")
    bundle.hierarchy.meta["generator_fingerprint"] = "sha256:someone-else"
    bundle.hierarchy.save(tmp_path / "h.pt")
    assert load_hierarchy(tmp_path / "h.pt").meta == {"generator_fingerprint": "sha256:someone-else"}
    b = load_bundle("mine", generator=tmp_path / "g.pt", hierarchy=tmp_path / "h.pt", device="cpu")
    assert any("another generator" in n for n in b.notes)
    bundle.hierarchy.meta["generator_fingerprint"] = b.fingerprint
    bundle.hierarchy.save(tmp_path / "h2.pt")
    b2 = load_bundle("mine", generator=tmp_path / "g.pt", hierarchy=tmp_path / "h2.pt", device="cpu")
    assert not any("another generator" in n for n in b2.notes)
    # a refitted mapping (same synthesis) keeps a hierarchy that recorded the synthesis fingerprint
    from sfeditor.model.identity import synthesis_fingerprint

    G2 = type(bundle.G)(bundle.G.config)
    G2.load_state_dict(bundle.G.state_dict())
    with torch.no_grad():
        for p in G2.style.parameters():
            p.mul_(1.5)
    save_generator(G2, tmp_path / "g2.pt")
    b3 = load_bundle("mine", generator=tmp_path / "g2.pt", hierarchy=tmp_path / "h2.pt", device="cpu")
    assert any("another generator" in n for n in b3.notes)      # full fingerprint only: it differs
    bundle.hierarchy.meta["synthesis_fingerprint"] = synthesis_fingerprint(bundle.G)
    bundle.hierarchy.save(tmp_path / "h3.pt")
    b4 = load_bundle("mine", generator=tmp_path / "g2.pt", hierarchy=tmp_path / "h3.pt", device="cpu")
    assert not any("another generator" in n for n in b4.notes)
    # a fine-tuned image head (last conv, toRGB kernels): only the DeepPixel fingerprint still fits
    from sfeditor.model.identity import deep_pixel_fingerprint

    with torch.no_grad():
        G2.convs[-1].conv.weight.mul_(1.2)
        G2.to_rgbs[-1].bias.add_(0.1)
    save_generator(G2, tmp_path / "g3.pt")
    b5 = load_bundle("mine", generator=tmp_path / "g3.pt", hierarchy=tmp_path / "h3.pt", device="cpu")
    assert any("another generator" in n for n in b5.notes)
    bundle.hierarchy.meta["deep_pixel_fingerprint"] = deep_pixel_fingerprint(bundle.G)
    bundle.hierarchy.save(tmp_path / "h4.pt")
    b6 = load_bundle("mine", generator=tmp_path / "g3.pt", hierarchy=tmp_path / "h4.pt", device="cpu")
    assert not any("another generator" in n for n in b6.notes)
    bundle.hierarchy.meta.clear()
