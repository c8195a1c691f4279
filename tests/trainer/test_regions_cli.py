"""``regions`` / ``regions-eval`` commands end to end on a tiny generator, with a stub oracle."""
from __future__ import annotations

import json

import pytest
import torch

from sfeditor import Generator
from sfeditor.model.checkpoints import save_generator
from sfeditor.regions.regions_file import RegionsFile
from trainer import regions as cli

TINY = dict(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})


class StubOracle:
    """Stands in for the toy oracle: left half of every image is "church", right half "background"."""

    region_names = ["church", "background"]

    def predict(self, images):
        b, _, h, w = images.shape
        lab = torch.zeros(b, h, w, dtype=torch.long)
        lab[..., w // 2:] = 1
        return lab, torch.ones(b, h, w)


def recipe(path, **keys) -> str:
    """A recipe file at ``path`` (JSON, or TOML for a ``.toml`` name) with ``keys`` (flat, scalar values)."""
    if path.suffix == ".toml":
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    else:
        path.write_text(json.dumps(keys))
    return str(path)


SMALL = dict(samples=8, pixels=400, pca=8, batch=4)


@pytest.fixture(scope="module")
def gen_path(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("g") / "tiny.pt"
    save_generator(Generator(**TINY).eval(), path)
    return path


def test_regions_then_eval(tmp_path, gen_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_oracle", lambda domain, device: StubOracle())
    out = tmp_path / "run"
    base = ["regions", "--domain", "tiny", "--generator", str(gen_path), "--out", str(out), "--device", "cpu"]
    assert cli.main(base + ["--recipe", recipe(tmp_path / "r4.json", **SMALL, sheet_images=4, clusters=4)]) == 0
    rf = RegionsFile.load(out / "regions.json")
    assert rf.num_clusters == 4 and sorted(rf.leaves) == [f"cluster_{i}" for i in range(4)]
    assert (out / "ward-tree.npz").exists() and (out / "clusters.png").exists()
    assert sorted(p.name for p in (out / "clusters").iterdir()) == [f"cluster_{i:02d}.png" for i in range(4)]

    capsys.readouterr()
    r5 = recipe(tmp_path / "r5.toml", **SMALL, sheet_images=4, clusters=5, auto_label=True, tree="churches",
                label_images=4)
    assert cli.main(base + ["--recipe", r5]) == 0
    assert "reusing the Ward tree" in capsys.readouterr().err
    rf = RegionsFile.load(out / "regions.json")
    assert rf.num_clusters == 5 and set(rf.clusters.values()) == {"church", "background"}
    assert rf.tree.name == "all" and rf.clustering["auto_label"]["method"].startswith("majority")

    assert cli.main(["regions-eval", "--regions", str(out / "regions.json"), "--generator", str(gen_path),
                     "--recipe", recipe(tmp_path / "e.json", samples=6, m_images=3), "--out", str(tmp_path / "pics"),
                     "--device", "cpu"]) == 0
    card = RegionsFile.load(out / "regions.json").card
    assert 0 <= card["oracle_miou"] <= 1 and set(card["oracle_iou"]) == {"church", "background"}
    assert json.loads(capsys.readouterr().out)["oracle_miou"] == card["oracle_miou"]
    assert (tmp_path / "pics" / "tiny-regions-overlay.png").exists()
    assert (tmp_path / "pics" / "tiny-regions-M.png").exists()


def test_regions_with_prune_and_regions_prune(tmp_path, gen_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_oracle", lambda domain, device: StubOracle())
    out = tmp_path / "run"
    base = ["regions", "--domain", "tiny", "--generator", str(gen_path), "--out", str(out), "--device", "cpu"]
    run = dict(SMALL, sheet_images=2, clusters=30, tree="churches")
    assert cli.main(base + ["--recipe", recipe(tmp_path / "p.json", **run, prune=True)]) == 2   # labels needed first
    assert "prune needs labelled clusters" in capsys.readouterr().err
    labelled = dict(run, auto_label=True, label_images=4)
    assert cli.main(base + ["--recipe", recipe(tmp_path / "lp.json", **labelled, prune=True, prune_images=4)]) == 0
    assert "pruned 30 ->" in capsys.readouterr().err
    rf = RegionsFile.load(out / "regions.json")
    report = rf.clustering["pruning"]
    assert rf.num_clusters == report["clusters"] < 30 and report["images"] == 4
    assert set(rf.clusters.values()) == {"church", "background"}
    assert len(list((out / "clusters").iterdir())) == rf.num_clusters   # the earlier run's 30 sheets are gone

    # the same on a file labelled elsewhere (here: the unpruned auto-labelled one), in place and to --out
    assert cli.main(base + ["--recipe", recipe(tmp_path / "l.json", **labelled)]) == 0
    capsys.readouterr()
    assert cli.main(["regions-prune", "--regions", str(out / "regions.json"), "--generator", str(gen_path),
                     "--recipe", recipe(tmp_path / "pr.json", images=4), "--out", str(tmp_path / "pruned.json"),
                     "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["from_clusters"] == 30
    assert RegionsFile.load(out / "regions.json").num_clusters == 30
    assert RegionsFile.load(tmp_path / "pruned.json").num_clusters < 30
    assert cli.main(["regions-prune", "--regions", "toy-faces"]) == 2       # a shipped file is never overwritten
    assert "give --out" in capsys.readouterr().err


def test_commands_leave_autograd_as_they_found_it(tmp_path, gen_path):
    assert torch.is_grad_enabled()
    small = recipe(tmp_path / "r.json", samples=4, pixels=100, pca=4, clusters=2, sheet_images=1)
    assert cli.main(["regions", "--domain", "tiny", "--generator", str(gen_path), "--recipe", small,
                     "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert torch.is_grad_enabled()


def test_errors_are_reported(tmp_path, gen_path, capsys):
    assert cli.main(["regions-eval", "--regions", str(tmp_path / "nope.json")]) == 2
    assert "error" in capsys.readouterr().err
    # a recipe key of another command, or a value of the wrong type, is named with the file
    bad = recipe(tmp_path / "bad.json", clusters=4, m_images=3)
    assert cli.main(["regions", "--domain", "tiny", "--generator", str(gen_path), "--recipe", bad]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "unknown recipe key 'm_images'" in err
    assert cli.main(["regions", "--domain", "tiny", "--recipe", recipe(tmp_path / "t.json", clusters="4")]) == 2
    assert "clusters must be an integer" in capsys.readouterr().err


def test_layer_names():
    lay = Generator(**TINY).layout
    assert cli.layer_names(lay) == ["c4", "c8u", "c8", "c16u", "c16", "c32u", "c32", "t4", "t8", "t16", "t32"]
