"""Composition model: codes, JSON save/load with validation, PNG embedding."""
from __future__ import annotations

import copy
import json
import struct
import zlib

import numpy as np
import pytest
import torch

from editor_core_helpers import TREE2, composition, tiny_generator
from sfeditor.editor.composition import (FORMAT, PNG_KEYWORD, VERSION, Composition, NodeState, embed_in_png,
                                  extract_from_png)
from sfeditor.images.imageio import encode_png
from sfeditor.model.identity import generator_fingerprint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def G():
    return tiny_generator()


def rich(G=None) -> Composition:
    """A composition using every feature: w and w+ codes, locks, a collapsed node."""
    c = composition(truncation=0.5, generator_fingerprint=generator_fingerprint(G) if G is not None else "sha256:x",
                    hierarchy_path="/models/h.pt", hierarchy_identity="abc")
    g = torch.Generator().manual_seed(1)
    c.set_state("a", NodeState(seed=11, code=torch.randn(1, 16, generator=g), locked=True))
    c.set_state("left", NodeState(seed=12, collapsed=True))
    c.set_state("c", NodeState(seed=13, code=torch.randn(1, 6, 16, generator=g)))   # w+ (n_latent 6)
    c.set_state("d", NodeState(seed=4_000_000_000, locked=True))
    return c


# ------------------------------------------------------------------- model
def test_defaults_and_structure():
    c = composition()
    assert c.node_names == ["all", "left", "right", "a", "b", "c", "d"]
    assert c.leaves == ["a", "b", "c", "d"] and c.internal_nodes == ["all", "left", "right"]
    assert len({st.seed for st in c.nodes.values()}) == 7
    assert c.collapsed_nodes() == set()
    with pytest.raises(ValueError, match="leaf"):
        c.set_state("a", NodeState(collapsed=True))
    with pytest.raises(KeyError):
        c.state("nose")
    with pytest.raises(ValueError, match="seed"):
        c.set_state("a", NodeState(seed=-1))
    with pytest.raises(ValueError, match="truncation"):
        c.set_truncation(float("nan"))
    assert not c.set_state("a", c.state("a"))          # no change
    assert c.set_truncation(0.3) and not c.set_truncation(0.3)


def test_codes(G):
    c = rich(G)
    codes = c.codes(G)
    assert set(codes) == set(c.node_names)
    # seed codes follow G.sample_w with the composition's truncation
    ref = G.styles(G.sample_w(1, seed=c.state("b").seed, truncation=0.5))
    assert torch.equal(codes["b"].flat(), ref.flat())
    # explicit w and w+ codes are used as they are
    assert torch.equal(codes["a"].flat(), G.styles(c.state("a").code).flat())
    assert torch.equal(codes["c"].flat(), G.styles(c.state("c").code).flat())
    assert c.collapsed_nodes() == {"left"}
    assert c.check_model(G, generator_fingerprint(G)) == []
    assert c.check_model(None, "sha256:other")
    bad = composition()
    bad.set_state("a", NodeState(code=torch.zeros(1, 7)))
    assert "does not fit" in bad.check_model(G)[0]


def test_snapshot_is_independent():
    c = composition()
    s = c.snapshot()
    c.set_state("a", NodeState(seed=99))
    c.set_truncation(1.0)
    assert s.state("a").seed != 99 and s.truncation == 0.7


def test_tree_from_hierarchy_forms():
    c = Composition({"name": "all", "children": ["x", "y"]})
    assert c.leaves == ["x", "y"]
    c2 = Composition(("all", "x", "y"))
    assert c2.tree == c.tree


# --------------------------------------------------------------- save/load
def test_save_load_round_trip(tmp_path, G):
    c = rich(G)
    p = tmp_path / "comp.json"
    c.save(p)
    d = c.load(p)
    assert d.same_as(c)
    assert d.generator_fingerprint == c.generator_fingerprint and d.hierarchy_path == "/models/h.pt"
    assert d.hierarchy_identity == "abc" and d.domain == "toy-faces"
    for n in c.node_names:
        a, b = c.codes(G)[n].flat(), d.codes(G)[n].flat()
        assert torch.equal(a, b), n
    assert d.state("c").code.shape == (1, 6, 16)
    # lists instead of base64
    e = Composition.from_dict(json.loads(c.to_json(lists=True)))
    assert e.same_as(c)
    assert not list(tmp_path.glob(".*tmp"))             # atomic write leaves no temp file


def _mutate(fn):
    d = json.loads(rich().to_json())
    fn(d)
    return d


def _set(path, value):
    def f(d):
        *head, last = path
        for k in head:
            d = d[k]
        d[last] = value
    return f


def _delete(path):
    def f(d):
        *head, last = path
        for k in head:
            d = d[k]
        del d[last]
    return f


BAD = [
    ("not an object", lambda d: None, "expected a JSON object"),
    ("format", _set(["format"], "sfeditor-regions"), "format"),
    ("version type", _set(["version"], "1"), "version"),
    ("version zero", _set(["version"], 0), "version"),
    ("version newer", _set(["version"], VERSION + 1), "newer"),
    ("unknown key", _set(["extra"], 1), "unknown keys"),
    ("domain", _set(["domain"], 5), "domain"),
    ("model", _set(["model"], []), "model"),
    ("fingerprint", _set(["model", "generator_fingerprint"], 3), "generator_fingerprint"),
    ("hierarchy", _set(["model", "hierarchy"], "h.pt"), "model.hierarchy"),
    ("hierarchy path", _set(["model", "hierarchy", "path"], 1), "hierarchy.path"),
    ("hierarchy identity", _set(["model", "hierarchy", "identity"], []), "hierarchy.identity"),
    ("tree missing", _delete(["tree"]), "tree"),
    ("tree shape", _set(["tree"], {"name": "all", "children": ["a"]}), "exactly 2 children"),
    ("tree dup", _set(["tree"], {"name": "all", "children": ["a", "a"]}), "duplicate"),
    ("truncation missing", _delete(["truncation"]), "truncation"),
    ("truncation type", _set(["truncation"], "0.7"), "truncation"),
    ("truncation range", _set(["truncation"], 5.0), "truncation"),
    ("nodes type", _set(["nodes"], []), "nodes"),
    ("node missing", _delete(["nodes", "b"]), "missing settings"),
    ("node unknown", _set(["nodes", "nose"], {"seed": 1}), "not in the tree"),
    ("node type", _set(["nodes", "b"], 3), "nodes.b"),
    ("node key", _set(["nodes", "b", "colour"], 1), "unknown keys"),
    ("seed missing", _delete(["nodes", "b", "seed"]), "nodes.b.seed"),
    ("seed type", _set(["nodes", "b", "seed"], 1.5), "seed"),
    ("seed bool", _set(["nodes", "b", "seed"], True), "seed"),
    ("seed range", _set(["nodes", "b", "seed"], 2 ** 40), "seed"),
    ("locked", _set(["nodes", "b", "locked"], "yes"), "nodes.b.locked"),
    ("collapsed", _set(["nodes", "left", "collapsed"], 1), "nodes.left.collapsed"),
    ("collapsed leaf", _set(["nodes", "b", "collapsed"], True), "leaf"),
    ("code type", _set(["nodes", "b", "code"], "abc"), "nodes.b.code"),
    ("code base64", _set(["nodes", "b", "code"], {"dtype": "float32", "shape": [1, 16], "base64": "!!"}),
     "nodes.b.code"),
    ("code length", _set(["nodes", "b", "code"], {"dtype": "float32", "shape": [1, 16], "base64": "AAAA"}),
     "nodes.b.code"),
    ("code dtype", _set(["nodes", "b", "code"], {"dtype": "int8", "shape": [4], "base64": "AAAAAA=="}),
     "nodes.b.code"),
    ("code ragged", _set(["nodes", "b", "code"], [[1.0, 2.0], [3.0]]), "nodes.b.code"),
    ("code nan", _set(["nodes", "b", "code"], [float("nan")] * 4), "non-finite"),
    ("code shape", _set(["nodes", "b", "code"], [[[[1.0]]]]), "nodes.b.code"),
    ("code batch", _set(["nodes", "b", "code"], [[[1.0, 2.0]], [[1.0, 2.0]]]), "nodes.b.code"),
]


@pytest.mark.parametrize("name,mutate,match", BAD, ids=[b[0] for b in BAD])
def test_validation_errors(name, mutate, match):
    d = None if name == "not an object" else _mutate(mutate)
    with pytest.raises(ValueError, match=match):
        Composition.from_dict(d if d is not None else [1, 2])


def test_load_errors(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b"\xff\xfe{garbage")
    with pytest.raises(ValueError, match=str(p).replace("\\", "\\\\") + ".*not valid JSON"):
        Composition.load(p)
    p.write_text("{\"format\": \"sfeditor-composition\", \"version\": 99}")
    with pytest.raises(ValueError, match="newer"):
        Composition.load(p)
    with pytest.raises(FileNotFoundError):
        Composition.load(tmp_path / "missing.json")


# -------------------------------------------------------------------- PNG
def _png() -> bytes:
    return encode_png(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3))


def _chunk_types(data: bytes) -> list[bytes]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append(data[pos + 4:pos + 8])
        pos += 12 + n
    return out


def test_png_round_trip():
    import cv2

    c = rich()
    png = _png()
    assert extract_from_png(png) is None
    out = embed_in_png(png, c)
    assert extract_from_png(out).same_as(c)
    types = _chunk_types(out)
    assert types[0] == b"IHDR" and types[-1] == b"IEND" and types.count(b"iTXt") == 1
    # still a valid image with the same pixels
    assert np.array_equal(cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_UNCHANGED),
                          cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED))
    # re-embedding replaces the old chunk
    c2 = composition(tree=TREE2)
    again = embed_in_png(out, c2)
    assert _chunk_types(again).count(b"iTXt") == 1
    assert extract_from_png(again).same_as(c2)


def test_png_text_chunk_fallback():
    """A plain tEXt chunk with our keyword (written by another tool) is read too."""
    c = composition()
    payload = PNG_KEYWORD.encode() + b"\x00" + c.to_json().encode()
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    png = _png()
    iend = png.rindex(b"IEND") - 4
    assert extract_from_png(png[:iend] + chunk + png[iend:]).same_as(c)


@pytest.mark.parametrize("garbage", [b"", b"hello", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
                                     bytes(range(256)) * 4, "not bytes"])
def test_png_garbage(garbage):
    assert extract_from_png(garbage) is None
    with pytest.raises(ValueError):
        embed_in_png(garbage, composition())


def test_png_damaged_chunks():
    out = embed_in_png(_png(), composition())
    i = out.index(b"iTXt")
    # flip a byte inside the compressed text: CRC no longer matches -> ignored
    broken = bytearray(out)
    broken[i + 40] ^= 0xFF
    assert extract_from_png(bytes(broken)) is None
    # truncated file
    assert extract_from_png(out[: i + 20]) is None
    # intact CRC but corrupt compressed stream
    payload = PNG_KEYWORD.encode() + b"\x00\x01\x00\x00\x00" + b"not zlib"
    chunk = struct.pack(">I", len(payload)) + b"iTXt" + payload + struct.pack(">I", zlib.crc32(b"iTXt" + payload))
    png = _png()
    iend = png.rindex(b"IEND") - 4
    assert extract_from_png(png[:iend] + chunk + png[iend:]) is None
    # and embedding over it drops the broken chunk
    fixed = embed_in_png(png[:iend] + chunk + png[iend:], composition())
    assert _chunk_types(fixed).count(b"iTXt") == 1 and extract_from_png(fixed) is not None


def test_png_newer_version_is_reported():
    c = composition()
    d = c.to_dict()
    d["version"] = VERSION + 1
    text = zlib.compress(json.dumps(d).encode())
    payload = PNG_KEYWORD.encode() + b"\x00\x01\x00\x00\x00" + text
    chunk = struct.pack(">I", len(payload)) + b"iTXt" + payload + struct.pack(">I", zlib.crc32(b"iTXt" + payload))
    png = _png()
    iend = png.rindex(b"IEND") - 4
    with pytest.raises(ValueError, match="newer"):
        extract_from_png(png[:iend] + chunk + png[iend:])


def test_format_constants():
    d = composition().to_dict()
    assert d["format"] == FORMAT == "sfeditor-composition" and d["version"] == 1
    assert copy.deepcopy(d) == json.loads(json.dumps(d))


def test_external_tensors_are_copied():
    c = composition()
    t = torch.zeros(1, 16)
    c.set_state("a", NodeState(code=t))
    t += 1                                               # the caller keeps editing its own tensor
    assert c.state("a").code.abs().sum() == 0
    kept = c.state("a").code
    c.set_state("a", NodeState(code=kept, locked=True))  # our own tensor is kept, not copied again
    assert c.state("a").code is kept
