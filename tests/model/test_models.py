"""`sfeditor models`: downloads from a LOCAL HTTP server (Range, interruption, wrong size, corrupt content,
server errors), licence acceptance, load checks, conversion, registration, checksums on later use."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from model_server import model_server
from ckpt_writers import random_generator, write_ada_pkl, write_rosinality, write_tf_pkl
from ckpt_writers import tiny_e4e_checkpoint
from sfeditor.model import registry as M
from sfeditor.model.checkpoints import load_generator
from sfeditor.cli import main

TINY = dict(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8})


@pytest.fixture
def server():
    with model_server() as srv:
        yield srv


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFEDITOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(M.BASE_URL_ENV, raising=False)
    return tmp_path / "cache"


def _church(**changes):
    """The registry's church entry with the tiny test generator's resolution."""
    return dataclasses.replace(M.KNOWN["stylegan2-church"], resolution=16, **changes)


def _serve(server, tmp_path, writer, name="stylegan2-church-config-f.pkl", seed=3):
    G = random_generator(seed, **TINY)
    writer(G, tmp_path / name)
    data = (tmp_path / name).read_bytes()
    server.files[f"/nets/{name}"] = data
    return G, data


def _same(G, path):
    H = load_generator(path, device="cpu")
    a, b = G.state_dict(), H.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ------------------------------------------------------------------ tests
def test_registry_lists_official_files_with_licence_and_source():
    nv = [m for m in M.KNOWN.values() if m.url]
    assert {m.name for m in nv} == {"stylegan2-ffhq", "stylegan2-car", "stylegan2-church"}
    for m in nv:
        assert m.url.startswith("https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-")
        assert m.url.endswith(m.filename) and "NC" in m.licence and "non-commercial" in m.licence_text
    assert [M.KNOWN[f"stylegan2-{d}"].resolution for d in ("ffhq", "car", "church")] == [1024, 512, 256]
    for m in M.KNOWN.values():
        if not m.url:                # no direct link: says where to get it and how to register it
            assert m.kind in ("fusion", "encoder") and m.source.startswith("https://github.com/")
            assert f"sfeditor models register {m.name}" in m.how_to_get


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SFEDITOR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert M.cache_dir() == tmp_path / "xdg" / "sfeditor"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert M.cache_dir() == tmp_path / "home" / ".cache" / "sfeditor"
    monkeypatch.setenv("SFEDITOR_CACHE", str(tmp_path / "c"))
    assert M.models_dir() == tmp_path / "c" / "models"


def test_complete_download_checks_converts_and_records(server, cache, tmp_path):
    G, data = _serve(server, tmp_path, write_tf_pkl)
    seen = []
    rec = M.download(_church(), accept_licence=True, base_url=server.base,
                     progress=lambda d, t, s: seen.append((d, t, s)))
    assert server.log == [("/nets/stylegan2-church-config-f.pkl", None)]
    assert rec["source_sha256"] == hashlib.sha256(data).hexdigest() and rec["source_size"] == len(data)
    assert rec["source_format"] == "nvidia-tf" and rec["format"] == "sfeditor-generator"
    assert ("downloading" in {s for _, _, s in seen}) and seen[-1][2] == "converting"
    assert max(d for d, t, s in seen if s == "downloading") == len(data)
    path = M.installed_path("stylegan2-church")
    assert path.name == "stylegan2-church.sfeditor.pt"
    _same(G, path)                                                   # the conversion holds the same weights
    assert _files(cache / "models") == ["registry.json", "stylegan2-church/stylegan2-church.sfeditor.pt"]
    assert json.loads((cache / "models" / "registry.json").read_text())["models"]["stylegan2-church"]["sha256"] == \
        hashlib.sha256(path.read_bytes()).hexdigest()
    # a second download fetches nothing: the checksum of what is there is verified
    assert M.download(_church(), base_url=server.base)["sha256"] == rec["sha256"]
    assert len(server.log) == 1


def test_cli_download_progress_list_path_remove(server, cache, tmp_path, capsys, monkeypatch):
    G, data = _serve(server, tmp_path, write_ada_pkl)
    monkeypatch.setitem(M.KNOWN, "stylegan2-church", _church())
    assert main(["models", "download", "stylegan2-church", "--base-url", server.base]) == 2     # licence first
    err = capsys.readouterr().err
    assert "licence" in err and "--accept-licence" in err and server.log == []
    monkeypatch.setenv(M.BASE_URL_ENV, server.base)
    assert main(["models", "download", "stylegan2-church", "--accept-licence"]) == 0
    out, err = capsys.readouterr()
    assert "100%" in err and hashlib.sha256(data).hexdigest() in out and "installed" in out
    assert main(["models", "path", "stylegan2-church"]) == 0
    path = capsys.readouterr().out.strip()
    _same(G, path)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "stylegan2-church" in out and "installed" in out and hashlib.sha256(data).hexdigest() in out
    assert "NVIDIA Source Code License-NC" in out and "sfeditor models register e4e-ffhq" in out
    assert main(["models", "remove", "stylegan2-church"]) == 0
    assert main(["models", "path", "stylegan2-church"]) == 2
    assert "not installed" in capsys.readouterr().err
    assert _files(cache / "models") == ["registry.json"]


def test_interrupted_transfer_resumes_with_range(server, cache, tmp_path):
    G, data = _serve(server, tmp_path, write_rosinality)
    cut = len(data) * 2 // 5
    server.cut["/nets/stylegan2-church-config-f.pkl"] = cut
    with pytest.raises(M.ModelError, match="broke off .* run the command again to resume"):
        M.download(_church(), accept_licence=True, base_url=server.base)
    part = cache / "models" / "stylegan2-church" / "stylegan2-church-config-f.pkl.part"
    assert part.stat().st_size == cut and "stylegan2-church" not in M.Registry().models
    with pytest.raises(M.ModelError, match="not installed"):
        M.installed_path("stylegan2-church")
    rec = M.download(_church(), base_url=server.base)
    assert server.log[-1] == ("/nets/stylegan2-church-config-f.pkl", f"bytes={cut}-")
    assert rec["source_sha256"] == hashlib.sha256(data).hexdigest() and not part.exists()
    _same(G, M.installed_path("stylegan2-church"))
    # a .part that already holds everything (cancelled after the last byte): the server's 416 completes it
    M.remove("stylegan2-church")
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    M.download(_church(), base_url=server.base)
    assert server.log[-1] == ("/nets/stylegan2-church-config-f.pkl", f"bytes={len(data)}-")
    _same(G, M.installed_path("stylegan2-church"))


def test_cancel_keeps_the_part_and_a_server_without_ranges_restarts(server, cache, tmp_path):
    G, data = _serve(server, tmp_path, write_rosinality)

    class Token:
        requested = False

    tok = Token()

    def progress(done, total, stage):
        if stage == "downloading" and done > 0:
            tok.requested = True

    with pytest.raises(M.Cancelled):
        M.download(_church(), accept_licence=True, base_url=server.base, progress=progress, cancel=tok)
    part = cache / "models" / "stylegan2-church" / "stylegan2-church-config-f.pkl.part"
    assert 0 < part.stat().st_size <= len(data)
    server.ranges = False                      # answers 200 with the whole file: the .part is rewritten
    rec = M.download(_church(), base_url=server.base)
    assert rec["source_sha256"] == hashlib.sha256(data).hexdigest()
    _same(G, M.installed_path("stylegan2-church"))


def test_wrong_size_and_published_checksum_refused(server, cache, tmp_path):
    G, data = _serve(server, tmp_path, write_tf_pkl)
    with pytest.raises(M.ModelError, match=f"wrong size: the server sends {len(data)} bytes.*known to have "
                                           f"{len(data) + 5}"):
        M.download(_church(size=len(data) + 5), accept_licence=True, base_url=server.base)
    assert _files(cache / "models") == ["registry.json"]       # only the accepted licence is recorded
    with pytest.raises(M.ModelError, match="SHA-256 .* differs from the published"):
        M.download(_church(size=len(data), sha256="ab" * 32), base_url=server.base)
    assert _files(cache / "models") == ["registry.json"]
    M.download(_church(size=len(data), sha256=hashlib.sha256(data).hexdigest()), base_url=server.base)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "malicious"])
def test_corrupt_content_fails_the_load_check_and_leaves_nothing(server, cache, tmp_path, damage):
    G, data = _serve(server, tmp_path, write_ada_pkl)
    if damage == "garbage":
        body = bytes(range(256)) * 40
    elif damage == "truncated":
        body = data[: len(data) // 2]
    else:                                   # a pickle that would run code if it were unpickled naively
        body = b"\x80\x04cos\nsystem\n(S'touch pwned'\ntR."
    server.files["/nets/stylegan2-church-config-f.pkl"] = body
    with pytest.raises(M.ModelError, match="stylegan2-church-config-f.pkl: failed the load check .*removed"):
        M.download(_church(), accept_licence=True, base_url=server.base)
    assert _files(cache / "models") == ["registry.json"] and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("code", [404, 500])
def test_server_errors_are_one_clear_line(server, cache, tmp_path, code, capsys, monkeypatch):
    server.status["/nets/stylegan2-church-config-f.pkl"] = code
    with pytest.raises(M.ModelError, match=f"server answered HTTP {code}"):
        M.download(_church(), accept_licence=True, base_url=server.base)
    assert _files(cache / "models") == ["registry.json"]
    monkeypatch.setitem(M.KNOWN, "stylegan2-church", _church())
    assert main(["models", "download", "stylegan2-church", "--base-url", server.base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"HTTP {code}" in err[0]


def test_unreachable_server_and_files_without_a_link(cache):
    with pytest.raises(M.ModelError, match="could not connect"):
        M.download(_church(), accept_licence=True, base_url="http://127.0.0.1:9", timeout=5)
    with pytest.raises(M.ModelError, match="no direct link.*sfeditor models register e4e-ffhq"):
        M.download("e4e-ffhq", accept_licence=True)
    with pytest.raises(M.ModelError, match="unknown model"):
        M.download("stylegan9", accept_licence=True)


def test_licence_not_accepted_downloads_nothing_and_is_remembered(server, cache, tmp_path):
    _serve(server, tmp_path, write_rosinality)
    with pytest.raises(M.LicenceNotAccepted, match="NVIDIA Source Code License-NC"):
        M.download(_church(), base_url=server.base)
    assert server.log == [] and not (cache / "models" / "stylegan2-church").exists()
    M.download(_church(), accept_licence=True, base_url=server.base)
    assert M.NVIDIA_NC in M.Registry().licences
    M.remove("stylegan2-church")
    M.download(_church(), base_url=server.base)             # accepted once: not asked again


def test_checksum_mismatch_on_later_use(server, cache, tmp_path, capsys):
    _serve(server, tmp_path, write_tf_pkl)
    M.download(_church(), accept_licence=True, base_url=server.base)
    path = M.installed_path("stylegan2-church")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                                 # same size, one byte changed
    path.write_bytes(bytes(raw))
    with pytest.raises(M.ModelError, match="checksum mismatch"):
        M.installed_path("stylegan2-church")
    with pytest.raises(M.ModelError, match="checksum mismatch"):
        M.download(_church(), base_url=server.base)
    path.write_bytes(bytes(raw[:-10]))                          # truncated
    with pytest.raises(M.ModelError, match="checksum mismatch"):
        M.installed_path("stylegan2-church")
    path.unlink()
    with pytest.raises(M.ModelError, match="missing"):
        M.installed_path("stylegan2-church")


def test_register_user_files(cache, tmp_path, capsys):
    """A generator fetched by hand is validated and converted; a broken one leaves nothing behind."""
    G = random_generator(5, **TINY)
    write_rosinality(G, tmp_path / "mine.pt", training=True)
    assert main(["models", "register", "my-faces", str(tmp_path / "mine.pt"), "--kind", "generator",
                 "--domain", "ffhq"]) == 0
    out = capsys.readouterr().out
    assert hashlib.sha256((tmp_path / "mine.pt").read_bytes()).hexdigest() in out
    _same(G, M.installed_path("my-faces"))
    assert M.domain_of_file(M.installed_path("my-faces")) == "ffhq"
    assert M.domain_of_file("my-faces") == "ffhq" and M.domain_of_file("not-installed") is None   # by name too
    from sfeditor.model.truncation import truncation_for

    assert truncation_for("my-faces", "my-faces") == (0.7, "paper A.6 for ffhq")   # `render -m my-faces`
    assert (tmp_path / "mine.pt").is_file()                    # the user's file is left alone
    with pytest.raises(M.ModelError, match="already installed"):
        M.register("my-faces", tmp_path / "mine.pt", kind="generator", domain="ffhq")
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 broken zip")
    assert main(["models", "register", "bad-one", str(tmp_path / "bad.pt"), "--kind", "generator",
                 "--domain", "ffhq"]) == 2
    assert "failed the load check" in capsys.readouterr().err
    assert not (cache / "models" / "bad-one").exists()
    with pytest.raises(M.ModelError, match="give --kind"):
        M.register("whatever", tmp_path / "mine.pt")
    with pytest.raises(M.ModelError, match="is the generator for church"):
        M.register("stylegan2-church", tmp_path / "mine.pt", domain="ffhq")
    with pytest.raises(M.ModelError, match="no such file"):
        M.register("e4e-ffhq", tmp_path / "missing.pt")


def _official_fusion_sd(seed: int, width: int = 32) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for blender, extra in (("blender_segments", width), ("blender_common", 0)):
        dims = [2 * width + extra + 190, 5 * width, 5 * width, 5 * width, width, width]
        for k in range(5):
            sd[f"{blender}.disentangle_net.{k}.weight"] = torch.randn(dims[k + 1], dims[k], generator=g)
            sd[f"{blender}.disentangle_net.{k}.bias"] = torch.randn(dims[k + 1], generator=g)
    return sd


def test_register_official_fusion_weights_json(cache, tmp_path):
    """The official repository layout (weights/ffhq_weights.json -> weights/ffhq/*.pt) converts to one own file
    that fuses exactly like the official files."""
    from sfeditor.fusion.hierarchy import load_hierarchy
    from sfeditor.regions.tree import paper_tree as official_tree

    (tmp_path / "weights" / "ffhq").mkdir(parents=True)
    nodes = ["all", "bg_hair_clothes", "bg_clothes", "face", "skin_mouth"]
    for i, node in enumerate(nodes):
        torch.save({"state_dict": _official_fusion_sd(i)}, tmp_path / "weights" / "ffhq" / f"{node}.pt")
    spec = tmp_path / "weights" / "ffhq_weights.json"
    spec.write_text(json.dumps({n: f"weights/ffhq/{n}.pt" for n in nodes}))
    rec = M.register("stylefusion-ffhq", spec)
    assert rec["format"] == "sfeditor-hierarchy" and rec["kind"] == "fusion"
    h_own = load_hierarchy(M.installed_path("stylefusion-ffhq"))
    h_ref = load_hierarchy(spec)
    assert h_own.root == official_tree("ffhq")
    for n in nodes:
        a, b = h_own.nets[n].state_dict(), h_ref.nets[n].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "weights" / "ffhq" / "face.pt").write_bytes(b"not a torch file")
    with pytest.raises(M.ModelError, match="failed the load check"):
        M.register("stylefusion-car", spec)


def test_register_e4e_encoder_checks_domain_resolution(cache, tmp_path):
    tiny_e4e_checkpoint(tmp_path / "e4e_16.pt", 6, 16)
    with pytest.raises(M.ModelError, match="16 px generator, e4e-ffhq needs 1024 px"):
        M.register("e4e-ffhq", tmp_path / "e4e_16.pt")
    assert M.registered_encoder("ffhq") is None
    rec = M.register("tiny-e4e", tmp_path / "e4e_16.pt", kind="encoder", domain="tiny")
    assert rec["format"] == "e4e" and rec["resolution"] == 16
    path = M.registered_encoder("tiny")
    assert path.read_bytes() == (tmp_path / "e4e_16.pt").read_bytes() and path.parent.parent == cache / "models"
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "opts": {"encoder_type": "Encoder4Editing"}},
               tmp_path / "half.pt")
    with pytest.raises(M.ModelError, match="failed the load check"):
        M.register("other-e4e", tmp_path / "half.pt", kind="encoder", domain="tiny")
    assert not (cache / "models" / "other-e4e").exists()


def test_module_fingerprint_reads_zero_dim_buffers():
    """e4e's BatchNorm layers carry a 0-d `num_batches_tracked`; the fingerprint (cache key) must hash it."""
    from sfeditor.model.identity import module_fingerprint

    a, b = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    assert module_fingerprint(a) == module_fingerprint(b)
    b.num_batches_tracked += 1
    assert module_fingerprint(a) != module_fingerprint(b)


class TrainingOptions:                  # metadata a training script might save beside the weights
    def __init__(self):
        self.lr = 0.1


class RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_fusion_weight_files_with_metadata_are_read_safely(cache, tmp_path, monkeypatch):
    """Official-layout net files that also pickle option objects (or worse) load their tensors only;
    nothing in the file runs."""
    import argparse
    import sys
    import types

    from sfeditor.fusion.fusion_net import read_weight_file
    from sfeditor.fusion.hierarchy import load_hierarchy

    mod = types.ModuleType("stylefusion_train_opts")
    mod.TrainingOptions = TrainingOptions
    monkeypatch.setattr(TrainingOptions, "__module__", "stylefusion_train_opts")
    monkeypatch.setitem(sys.modules, "stylefusion_train_opts", mod)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights" / "church").mkdir(parents=True)
    sd = _official_fusion_sd(7)
    torch.save({"state_dict": sd, "opts": TrainingOptions(), "args": argparse.Namespace(batch=4), "step": 10,
                "evil": RunsCode()}, tmp_path / "weights" / "church" / "all.pt")
    torch.save({**sd, "opts": TrainingOptions()}, tmp_path / "raw.pt")        # metadata beside a raw state dict
    monkeypatch.delitem(sys.modules, "stylefusion_train_opts")                 # the class is not importable here
    got = read_weight_file(tmp_path / "weights" / "church" / "all.pt")
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    raw = read_weight_file(tmp_path / "raw.pt")
    assert set(raw) == set(sd)
    assert not (tmp_path / "PWNED").exists()
    spec = tmp_path / "weights" / "church_weights.json"
    spec.write_text(json.dumps({"all": "weights/church/all.pt"}))
    assert load_hierarchy(spec).root.children[0].name == "church"
    M.register("stylefusion-church", spec)
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(ValueError, match=r"junk.pt: not a readable FusionNet weight file \(\w+: [^\n]+\)$"):
        read_weight_file(tmp_path / "junk.pt")
