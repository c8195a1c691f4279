from __future__ import annotations

import numpy as np
import pytest
import torch

from sfeditor.toy import DOMAINS, region_names, render
from sfeditor.toy.oracle import build_oracle, default_path, load_oracle, save_oracle
from trainer.oracle import HELDOUT_SEED_START, augment, train_oracle, train_seeds


@pytest.mark.parametrize("domain", DOMAINS)
def test_shipped_oracle_accuracy(domain):
    if not default_path(domain).is_file():
        pytest.skip(f"no shipped oracle for {domain}")
    torch.set_num_threads(1)
    oracle = load_oracle(domain)
    assert not oracle.training
    imgs, labs = render(domain, HELDOUT_SEED_START + 500_000 + np.arange(64), size=64)
    pred, conf = oracle.predict(imgs)
    assert pred.shape == labs.shape and pred.dtype == np.uint8
    assert conf.shape == labs.shape and conf.dtype == np.float32
    assert 0.0 <= conf.min() and conf.max() <= 1.0 + 1e-6
    acc = (pred == labs).mean()
    assert acc >= 0.97, acc
    # tensor input in [-1, 1] gives tensors and the same answer
    x = torch.from_numpy(imgs[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    tl, tc = oracle.predict(x)
    assert isinstance(tl, torch.Tensor) and tl.shape == (4, 64, 64)
    assert (tl.numpy() == pred[:4]).mean() > 0.999
    # a single uint8 image
    one, _ = oracle.predict(imgs[0])
    assert one.shape == (64, 64)
    assert oracle.region_names == region_names(domain)


def test_shipped_file_format():
    for domain in DOMAINS:
        p = default_path(domain)
        if not p.is_file():
            pytest.skip("oracles not trained yet")
        obj = torch.load(p, map_location="cpu", weights_only=True)
        assert obj["format"] == "sfeditor-oracle" and obj["version"] == 1 and obj["domain"] == domain
        assert all(v.dtype == torch.float16 for v in obj["state_dict"].values() if v.is_floating_point())
        assert obj["metrics"]["pixel_accuracy"] >= 0.97


def test_bad_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="not a readable sfeditor oracle"):
        load_oracle("toy-faces", path=garbage)
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "something-else", "state_dict": {}}, wrong)
    with pytest.raises(ValueError, match="not an sfeditor oracle file"):
        load_oracle("toy-faces", path=wrong)
    torch.save([1, 2, 3], wrong)
    with pytest.raises(ValueError, match="not an sfeditor oracle file"):
        load_oracle("toy-faces", path=wrong)
    bad_sd = tmp_path / "bad_sd.pt"
    torch.save({"format": "sfeditor-oracle", "version": 1, "domain": "toy-faces",
                "config": {"widths": [16, 32, 64, 80], "dec_widths": [48, 32, 16]},
                "state_dict": {"nope": torch.zeros(1)}}, bad_sd)
    with pytest.raises(ValueError, match="do not match"):
        load_oracle("toy-faces", path=bad_sd)
    with pytest.raises(FileNotFoundError):
        load_oracle("toy-faces", path=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown toy domain"):
        load_oracle("toy-dogs")


def test_domain_mismatch(tmp_path):
    p = tmp_path / "cars.pt"
    save_oracle(build_oracle("toy-cars"), p, {"pixel_accuracy": 0.0})
    assert load_oracle("toy-cars", path=p).num_classes == 4
    with pytest.raises(ValueError, match="not 'toy-faces'"):
        load_oracle("toy-faces", path=p)


def test_round_trip_fp16(tmp_path):
    torch.manual_seed(0)
    m = build_oracle("toy-faces").eval()
    p = tmp_path / "o.pt"
    save_oracle(m, p)
    m2 = load_oracle("toy-faces", path=p)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(m(x), m2(x), atol=5e-2)
    assert p.stat().st_size < 700_000


def test_train_seeds_disjoint_from_heldout():
    for step in (0, 1, 10**6, 10**9):
        s = train_seeds(7, step, 64)
        assert s.max() < HELDOUT_SEED_START and s.min() >= 0
    np.testing.assert_array_equal(train_seeds(3, 5, 8), train_seeds(3, 5, 8))


def test_augment_keeps_range_and_is_deterministic():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1


def test_train_resume_tiny(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "o.pt"
    seen = []
    m = train_oracle("toy-cars", out, steps=4, batch=2, size=16, ckpt_every=2, eval_images=4,
                     progress=lambda s, t, i: seen.append(s))
    assert out.is_file() and seen == [1, 2, 3, 4]
    assert not (tmp_path / "o.pt.train.pt").exists()
    assert 0.0 <= m["pixel_accuracy"] <= 1.0 and set(m["iou"]) == set(region_names("toy-cars"))
    # already done: returns the stored metrics without training
    again = train_oracle("toy-cars", out, steps=4, batch=2, size=16, eval_images=4,
                         progress=lambda s, t, i: pytest.fail("should not train"))
    assert again["pixel_accuracy"] == pytest.approx(m["pixel_accuracy"])


def test_train_cancel_then_resume(tmp_path):
    torch.set_num_threads(1)
    from trainer.common import Cancelled

    class Token:
        requested = False

    tok = Token()
    out = tmp_path / "o.pt"

    def prog(step, total, info):
        if step == 2:
            tok.requested = True

    with pytest.raises(Cancelled):
        train_oracle("toy-faces", out, steps=4, batch=2, size=16, eval_images=4, progress=prog, cancel=tok)
    ck = torch.load(tmp_path / "o.pt.train.pt", weights_only=True)
    assert ck["step"] == 2
    seen = []
    train_oracle("toy-faces", out, steps=4, batch=2, size=16, eval_images=4,
                 progress=lambda s, t, i: seen.append(s))
    assert seen == [3, 4] and out.is_file()
