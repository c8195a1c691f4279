"""Truncation ψ per domain (paper A.6: faces 0.7, cars and churches 0.5) for training, evaluation,
`sfeditor render` and the editor, also for generator files installed with `sfeditor models`."""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import torch

from ckpt_writers import random_generator, write_rosinality
from sfeditor.model import registry as M
from sfeditor.cli import main
from sfeditor.images.imageio import to_uint8
from sfeditor.model.truncation import PAPER_TRUNCATION, paper_domain, truncation_for

TINY = dict(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFEDITOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(M.BASE_URL_ENV, raising=False)
    return tmp_path / "cache"


def _install(tmp_path, name, domain, seed=4):
    G = random_generator(seed, **TINY)
    write_rosinality(G, tmp_path / f"{name}.pt")
    M.register(name, tmp_path / f"{name}.pt", kind="generator", domain=domain)
    return M.installed_path(name)


def test_paper_values_and_names():
    # A.6: "a truncation of 0.7 for the human facial domain and 0.5 for the cars and churches domains"
    assert PAPER_TRUNCATION == {"ffhq": 0.7, "car": 0.5, "church": 0.5}
    assert {d: M.KNOWN[f"stylegan2-{d}"].domain for d in PAPER_TRUNCATION} == {d: d for d in PAPER_TRUNCATION}
    assert [paper_domain(n) for n in ("FFHQ", "faces", "cars", "lsun_church", "afhq", None)] == \
        ["ffhq", "ffhq", "car", "church", None, None]
    assert truncation_for("ffhq")[0] == 0.7 and truncation_for("cars")[0] == 0.5
    assert truncation_for("churches") == (0.5, "paper A.6 for church")
    assert truncation_for("toy-cars")[0] == 0.5 and truncation_for("toy-faces")[0] == 0.7
    assert truncation_for("my-dogs")[0] == 1.0 and truncation_for("my-dogs", default=0.7)[0] == 0.7


def test_trainer_defaults_follow_the_paper(cache, tmp_path):
    from sfeditor.model.truncation import domain_truncation
    from trainer.regions import _truncation

    church = _install(tmp_path, "my-church", "church")
    assert domain_truncation("ffhq") == 0.7 and domain_truncation("car") == 0.5
    assert domain_truncation("whatever") == 1.0
    assert domain_truncation("whatever", str(church)) == 0.5          # the registry knows the file's domain
    args = argparse.Namespace(truncation=None, generator=str(church))
    assert _truncation(args, "run-name") == 0.5
    assert _truncation(argparse.Namespace(truncation=0.9, generator=None), "ffhq") == 0.9


def test_render_uses_the_installed_domains_psi(cache, tmp_path, capsys):
    church = _install(tmp_path, "my-church", "church")
    from sfeditor.model.checkpoints import load_generator

    G = load_generator(church, device="cpu")
    assert main(["render", "-m", str(church), "-s", "3", "--separate", "-o", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    assert "truncation psi = 0.5 (paper A.6 for church" in capsys.readouterr().err
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "seed000003.png")), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        want = to_uint8(G.synthesis(G.styles(G.sample_w(1, seed=3, truncation=0.5))))[0]
        untruncated = to_uint8(G.synthesis(G.styles(G.sample_w(1, seed=3, truncation=1.0))))[0]
    assert np.array_equal(got, want) and not np.array_equal(got, untruncated)


def test_editor_bundle_takes_the_paper_psi_and_says_so(cache, tmp_path):
    from sfeditor.editor.session import load_bundle

    church = _install(tmp_path, "my-church", "church")
    b = load_bundle(generator=church, device="cpu")
    assert b.truncation == 0.5 and any("ψ 0.5 (paper A.6 for church)" in n for n in b.notes)
    b = load_bundle("ffhq", generator=church, device="cpu")             # the domain named on the command line
    assert b.truncation == 0.7
    plain = tmp_path / "plain.pt"
    write_rosinality(random_generator(1, **TINY), plain)
    b = load_bundle(generator=plain, device="cpu")
    assert b.truncation == 0.7 and any("no paper value" in n for n in b.notes)
    assert load_bundle(generator=church, device="cpu", truncation=0.9).truncation == 0.9


def test_editor_opens_a_partial_weights_json_with_the_domains_paper_tree(cache, tmp_path):
    """`sfeditor gui --generator <installed church> --hierarchy nets.json` where the JSON lists only `all`
    (which fits every paper tree): the generator's domain picks the tree (A.1)."""
    import json

    from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig
    from sfeditor.regions.tree import paper_tree as official_tree
    from sfeditor.editor.session import SessionError, load_bundle

    church = _install(tmp_path, "my-church", "church")
    G = random_generator(4, **TINY)
    net = FusionNet(FusionNetConfig.for_layout(G.layout, "paper"))
    torch.save(net.state_dict(), tmp_path / "all.pt")
    (tmp_path / "nets.json").write_text(json.dumps({"all": "all.pt"}))
    b = load_bundle(generator=church, hierarchy=tmp_path / "nets.json", device="cpu")
    assert b.hierarchy.root == official_tree("church")
    plain = tmp_path / "plain.pt"
    write_rosinality(G, plain)
    with pytest.raises(SessionError, match="fit the faces, cars, churches hierarchies"):
        load_bundle(generator=plain, hierarchy=tmp_path / "nets.json", device="cpu")
