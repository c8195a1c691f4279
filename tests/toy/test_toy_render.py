from __future__ import annotations

import numpy as np
import pytest

from sfeditor.toy import DOMAINS, region_names, render


@pytest.mark.parametrize("domain", DOMAINS)
def test_shapes_and_dtypes(domain):
    imgs, labs = render(domain, [0, 1, 2], size=64)
    assert imgs.shape == (3, 64, 64, 3) and imgs.dtype == np.uint8
    assert labs.shape == (3, 64, 64) and labs.dtype == np.uint8
    assert labs.max() < len(region_names(domain))


@pytest.mark.parametrize("domain", DOMAINS)
def test_deterministic_and_batch_independent(domain):
    a, la = render(domain, [5, 17, 123456789], size=64)
    b, lb = render(domain, [123456789, 3, 5], size=64)
    np.testing.assert_array_equal(a[0], b[2])
    np.testing.assert_array_equal(a[2], b[0])
    np.testing.assert_array_equal(la[0], lb[2])
    c, lc = render(domain, np.array([17]), size=64)
    np.testing.assert_array_equal(a[1], c[0])
    np.testing.assert_array_equal(la[1], lc[0])
    # large batches are processed in chunks: still per-seed
    seeds = np.arange(1000, 1200)
    big, _ = render(domain, seeds, size=64)
    np.testing.assert_array_equal(big[150], render(domain, [seeds[150]], size=64)[0][0])
    assert not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("domain", DOMAINS)
def test_params(domain):
    imgs, labs, params = render(domain, [1, 2, 3, 4], size=32, return_params=True)
    assert params and all(v.shape == (4,) for v in params.values())
    _, _, p2 = render(domain, [3], size=32, return_params=True)
    for k, v in p2.items():
        assert v[0] == params[k][2], k


@pytest.mark.parametrize("domain", DOMAINS)
def test_regions_present(domain):
    _, labs = render(domain, np.arange(200), size=64)
    k = len(region_names(domain))
    present = np.stack([(labs == i).any(axis=(1, 2)) for i in range(k)], axis=1)
    frac = present.mean(axis=0)
    assert (frac >= 0.9).all(), dict(zip(region_names(domain), frac))
    # no region is negligible overall
    share = np.bincount(labs.ravel(), minlength=k) / labs.size
    assert (share > 0.002).all(), share


@pytest.mark.parametrize("domain", DOMAINS)
def test_sizes_consistent(domain):
    i64, l64 = render(domain, [7, 8], size=64)
    i128, l128 = render(domain, [7, 8], size=128)
    assert i128.shape == (2, 128, 128, 3) and l128.shape == (2, 128, 128)
    # the same scene at two resolutions: labels mostly agree after downsampling
    agree = (l128[:, ::2, ::2] == l64).mean()
    assert agree > 0.9
    small = i128.reshape(2, 64, 2, 64, 2, 3).mean(axis=(2, 4))
    assert np.abs(small - i64.astype(np.float32)).mean() < 12


@pytest.mark.parametrize("domain", DOMAINS)
def test_labels_agree_with_pixels(domain):
    """Pixels of one region look like that region: per-image colour means differ by region."""
    imgs, labs = render(domain, np.arange(20), size=64)
    for img, lab in zip(imgs, labs):
        # each pixel's colour is closer to its own region's mean than chance would allow
        ids = np.unique(lab)
        means = np.stack([img[lab == i].reshape(-1, 3).mean(0) for i in ids])
        d = np.linalg.norm(img[..., None, :].astype(np.float32) - means, axis=-1)
        own = d[np.arange(64)[:, None], np.arange(64)[None, :], np.searchsorted(ids, lab)]
        assert (own <= d.min(-1) + 1e-3).mean() > 0.5


def test_region_names():
    assert region_names("toy-faces") == ["bg", "hair", "clothes", "skin", "eyes", "mouth"]
    assert region_names("toy-cars") == ["background_top", "background_bottom", "car_body", "wheels"]
    assert DOMAINS == ("toy-faces", "toy-cars")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown toy domain"):
        render("toy-dogs", [0])
    with pytest.raises(ValueError, match="unknown toy domain"):
        region_names("ffhq")
    for bad in (48, 8, 0, -64, 100, 64.0, "64"):
        with pytest.raises(ValueError, match="power of two"):
            render("toy-faces", [0], size=bad)
    with pytest.raises(ValueError, match="seeds"):
        render("toy-cars", [0.5, 1.5])
    with pytest.raises(ValueError, match="seeds"):
        render("toy-cars", [[1, 2]])


def test_empty_batch():
    imgs, labs, params = render("toy-faces", [], size=16, return_params=True)
    assert imgs.shape == (0, 16, 16, 3) and labs.shape == (0, 16, 16)
    assert all(v.shape == (0,) for v in params.values())


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_parameter_has_a_swap_group(domain):
    from sfeditor.toy import param_group, swap_groups

    _, _, params = render(domain, np.arange(64), size=16, return_params=True)
    groups = {param_group(domain, name) for name in params}
    assert groups == set(swap_groups(domain))


@pytest.mark.parametrize("domain", DOMAINS)
def test_render_swap_changes_only_the_swapped_region(domain):
    from scipy.ndimage import binary_dilation

    from sfeditor.toy import render_swap, swap_groups

    seeds, donors = np.arange(40, 72), np.arange(500, 532)
    a, la = render(domain, seeds)
    # a donor equal to the image itself changes nothing
    same, lsame = render_swap(domain, seeds, seeds, ["global"] * len(seeds))
    np.testing.assert_array_equal(same, a)
    names = region_names(domain)
    for g in swap_groups(domain)[1:]:
        img, lab = render_swap(domain, seeds, donors, [g] * len(seeds))
        k = names.index(g)
        region = binary_dilation((la == k) | (lab == k), iterations=2, axes=(1, 2))
        changed = np.abs(img.astype(int) - a.astype(int)).max(-1) > 8
        assert changed.any(), g
        outside = (changed & ~region).mean() / max(changed.mean(), 1e-9)
        # shapes that touch follow (a hairstyle covers some background), so not exactly 0
        assert outside < 0.35, (g, outside)
    with pytest.raises(ValueError, match="unknown swap group"):
        render_swap(domain, [1], [2], ["nose"])
    with pytest.raises(ValueError, match="same length"):
        render_swap(domain, [1, 2], [2], ["global"])
