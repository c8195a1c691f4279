"""StyleGAN2 core: S layout, numerics against independent reference computations, StyleCode."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sfeditor import Generator, GeneratorConfig, StyleCode, StyleLayout
from sfeditor.model.generator import default_channels
from sfeditor.model.upfirdn import make_kernel, upfirdn2d

SMALL = dict(size=32, style_dim=32, n_mlp=2, channels={4: 32, 8: 24, 16: 16, 32: 8})


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    g = Generator(**SMALL).eval()
    with torch.no_grad():  # non-trivial noise strengths and biases so every path matters
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgb1.bias"):
                p.normal_(0, 0.3)
    return g


@pytest.mark.parametrize("size,conv,rgb,layers", [
    (1024, 6048, 3040, (17, 9)), (512, 5952, 3008, (15, 8)), (256, 5760, 2944, (13, 7))])
def test_official_s_layouts(size, conv, rgb, layers):
    lay = StyleLayout.for_channels(default_channels(size))
    assert (lay.conv_size, lay.size - lay.conv_size) == (conv, rgb)
    assert (len(lay.conv_dims), len(lay.rgb_dims)) == layers
    assert lay.n_latent == int(math.log2(size)) * 2 - 2
    # w+ index synthesis uses: conv1 <- 0, convs[i] <- i+1, to_rgb1 <- 1, to_rgbs[j] <- 2j+3
    assert lay.conv_w == tuple(range(layers[0]))
    assert lay.rgb_w == (1,) + tuple(2 * j + 3 for j in range(layers[1] - 1))
    assert lay.rgb_w[-1] == lay.n_latent - 1


def test_official_state_dict_names():
    keys = set(Generator(size=64, style_dim=64, n_mlp=8, channels={4: 16, 8: 16, 16: 16, 32: 8, 64: 8}).state_dict())
    for k in ["style.1.weight", "style.8.bias", "input.input", "conv1.conv.weight", "conv1.conv.modulation.weight",
              "conv1.noise.weight", "conv1.activate.bias", "to_rgb1.conv.weight", "to_rgb1.bias",
              "convs.0.conv.blur.kernel", "convs.7.conv.modulation.bias", "to_rgbs.3.upsample.kernel",
              "noises.noise_0", "noises.noise_8"]:
        assert k in keys, k
    assert "noises.noise_9" not in keys and "convs.8.conv.weight" not in keys


def _upfirdn_numpy(x, k, up, down, pad):
    """Direct definition: zero-stuff, pad, full 2-D convolution, decimate."""
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * up, w * up), x.dtype)
    u[:, :, ::up, ::up] = x
    p0, p1 = pad
    u = np.pad(u, ((0, 0), (0, 0), (p0, p1), (p0, p1)))
    kh, kw = k.shape
    oh, ow = u.shape[2] - kh + 1, u.shape[3] - kw + 1
    out = np.zeros((n, c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            patch = u[:, :, i:i + kh, j:j + kw]
            out[:, :, i, j] = (patch * k[::-1, ::-1]).sum((2, 3))
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (0, 3))])
def test_upfirdn2d_matches_direct_definition(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float64)
    k = rng.standard_normal((4, 4))
    ours = upfirdn2d(torch.from_numpy(x), torch.from_numpy(k), up=up, down=down, pad=pad).numpy()
    np.testing.assert_allclose(ours, _upfirdn_numpy(x, k, up, down, pad), atol=1e-10)


def test_make_kernel_normalised():
    k = make_kernel([1, 3, 3, 1])
    assert k.shape == (4, 4) and torch.isclose(k.sum(), torch.tensor(1.0))


def _reference_image(G: Generator, w_plus: torch.Tensor) -> torch.Tensor:
    """Image computed layer by layer from the StyleGAN2 definitions, per sample.

    Each modulated conv builds its own per-sample weight w'_oik = s_i * w_oik,
    demodulates it (w'' = w' / sqrt(sum w'^2 + 1e-8)) and convolves; upsampling
    convs are a stride-2 transposed conv followed by the 4-tap blur.  Styles
    are taken from w+ with rosinality's synthesis indexing, independent of
    ``G.styles`` / ``StyleLayout``.
    """
    def modconv(layer, x, w_vec, demod=True, up=False):
        conv = layer.conv if hasattr(layer, "conv") else layer
        s = conv.modulation(w_vec[None])[0]
        wt = conv.scale * conv.weight[0] * s[None, :, None, None]
        if demod:
            wt = wt / torch.sqrt((wt ** 2).sum((1, 2, 3), keepdim=True) + 1e-8)
        if up:
            out = F.conv_transpose2d(x, wt.transpose(0, 1), stride=2)
            return upfirdn2d(out, conv.blur.kernel, pad=conv.blur.pad)
        return F.conv2d(x, wt, padding=conv.padding)

    def styled(layer, x, w_vec, noise, up=False):
        out = modconv(layer, x, w_vec, up=up) + layer.noise.weight * noise
        return F.leaky_relu(out + layer.activate.bias[None, :, None, None], 0.2) * math.sqrt(2)

    def rgb(layer, x, w_vec, skip):
        out = modconv(layer.conv, x, w_vec, demod=False) + layer.bias
        if skip is not None:
            out = out + upfirdn2d(skip, layer.upsample.kernel, up=2, pad=layer.upsample.pad)
        return out

    images = []
    noises = [getattr(G.noises, f"noise_{k}") for k in range(G.num_noises)]
    for wp in w_plus:
        x = G.input.input
        x = styled(G.conv1, x, wp[0], noises[0])
        skip = rgb(G.to_rgb1, x, wp[1], None)
        i = 1
        for k, to_rgb in enumerate(G.to_rgbs):
            x = styled(G.convs[2 * k], x, wp[i], noises[2 * k + 1], up=True)
            x = styled(G.convs[2 * k + 1], x, wp[i + 1], noises[2 * k + 2])
            skip = rgb(to_rgb, x, wp[i + 2], skip)
            i += 2
        images.append(skip)
    return torch.cat(images)


@pytest.mark.parametrize("fused", [False, True])
def test_synthesis_matches_reference_for_w_plus(G, fused):
    torch.manual_seed(1)
    w_plus = G.mapping(torch.randn(3 * G.n_latent, G.style_dim)).reshape(3, G.n_latent, G.style_dim)
    with torch.no_grad():
        ours = G.synthesis(G.styles(w_plus), noise_mode="const", fused=fused)
        ref = _reference_image(G, w_plus)
    assert ours.shape == (3, 3, 32, 32)
    assert (ours - ref).abs().max().item() < 1e-4


def test_each_w_plus_entry_reaches_only_its_layers(G):
    w = G.sample_w(1, seed=3).expand(G.n_latent, -1).clone()[None]
    base = G.styles(w)
    for k in range(G.n_latent):
        w2 = w.clone()
        w2[0, k] += 1.0
        changed = [(a - b).abs().max().item() > 0 for a, b in zip(G.styles(w2).layers, base.layers)]
        expect = [idx == k for idx in G.layout.conv_w + G.layout.rgb_w]
        assert changed == expect


def test_demodulated_weights_have_unit_norm(G):
    s = G.random_styles(2, seed=0)
    for norms in G.demodulated_weight_norms(s):
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


def test_mapping_truncation_and_seeds(G):
    G.update_w_avg(512, seed=0)
    z = torch.randn(4, G.style_dim)
    assert torch.allclose(G.mapping(z, truncation=0.0), G.w_avg.expand(4, -1), atol=1e-6)
    w1, w2 = G.mapping(z), G.mapping(z, 0.5)
    assert torch.allclose(w2, G.w_avg + 0.5 * (w1 - G.w_avg), atol=1e-5)
    assert torch.equal(G.sample_w(2, seed=5), G.sample_w(2, seed=5))
    assert not torch.equal(G.sample_w(2, seed=5), G.sample_w(2, seed=6))
    with pytest.raises(ValueError, match="z must be"):
        G.mapping(torch.randn(2, G.style_dim + 1))


def test_noise_modes(G):
    s = G.random_styles(2, seed=0)
    with torch.no_grad():
        a, b = G.synthesis(s, "const"), G.synthesis(s, "const")
        assert torch.equal(a, b)
        assert not torch.equal(G.synthesis(s, "random"), a)
        assert G.synthesis(s, "none").shape == a.shape
    with pytest.raises(ValueError):
        G.synthesis(s, "sometimes")


def test_styles_shapes_and_errors(G):
    s = G.random_styles(5, seed=0)
    assert len(s) == 5 and s.flat().shape == (5, G.layout.size)
    assert [t.shape[1] for t in s.conv] == list(G.layout.conv_dims)
    with pytest.raises(ValueError, match="w must be"):
        G.styles(torch.randn(2, 3, G.style_dim))
    other = Generator(size=16, style_dim=32, n_mlp=1, channels={4: 8, 8: 8, 16: 8})
    with pytest.raises(ValueError, match="layout"):
        G.synthesis(other.random_styles(1, seed=0))


def test_deep_pixels_align_with_conv_styles(G):
    s = G.random_styles(2, seed=0)
    with torch.no_grad():
        dp = G.deep_pixels(s, size=16)
        img, feats = G.synthesis(s, return_features=True)
    assert dp.shape == (2, G.layout.conv_size, 16, 16)
    assert [f.shape[1] for f in feats["conv"]] == list(G.layout.conv_dims)
    assert [f.shape[1] for f in feats["rgb"]] == list(G.layout.rgb_dims)
    assert [f.shape[-1] for f in feats["conv"]] == list(G.layout.conv_res)
    assert torch.equal(img, G.synthesis(s))
    # first block of DeepPixel channels is the (constant) input, upsampled
    const = F.interpolate(G.input.input.expand(2, -1, -1, -1), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(dp[:, :G.layout.conv_dims[0]], const, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_checkpointed_synthesis_has_the_same_values_and_gradients(G, fused):
    """``checkpoint=True`` recomputes the layers in the backward pass: images, features and the gradients
    w.r.t. the S code and a loss on the features equal the plain pass; without autograd it is the plain pass."""
    def run(checkpoint):
        s = G.random_styles(2, seed=1).detach().requires_grad_(True)
        img, feats = G.synthesis(s, "const", return_features=True, fused=fused, checkpoint=checkpoint)
        (img.square().mean() + sum(f.mean() for f in feats["conv"] + feats["rgb"])).backward()
        return img.detach(), [f.detach() for f in feats["conv"]], torch.cat([t.grad.reshape(-1) for t in s.layers])

    (img0, f0, g0), (img1, f1, g1) = run(False), run(True)
    assert torch.equal(img0, img1) and all(torch.equal(a, b) for a, b in zip(f0, f1))
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)
    assert float(g0.abs().sum()) > 0
    with torch.no_grad():
        assert torch.equal(G.synthesis(G.random_styles(1, seed=2), checkpoint=True),
                           G.synthesis(G.random_styles(1, seed=2)))


def test_stylecode_roundtrips(G, tmp_path):
    s = G.random_styles(4, seed=2)
    flat = s.flat()
    back = StyleCode.from_flat(G, flat)
    assert torch.equal(back.flat(), flat)
    assert torch.equal(StyleCode.cat([s[:1], s[1:]]).flat(), flat)
    assert len(s[2]) == 1 and torch.equal(s[2].flat(), flat[2:3])
    assert torch.allclose((s + s * 2.0 - s).flat(), 2 * flat)
    assert torch.allclose(s.lerp(s * 0.0, 0.1).flat(), 0.9 * flat)
    p = tmp_path / "codes.pt"
    s.save(p)
    loaded = StyleCode.load(p)
    assert torch.equal(loaded.flat(), flat) and loaded.layout == G.layout
    with torch.no_grad():
        assert torch.equal(G.synthesis(loaded), G.synthesis(s))
    with pytest.raises(ValueError, match="flat codes"):
        StyleCode.from_flat(G, flat[:, :-1])


def test_stylecode_bad_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable style-code file"):
        StyleCode.load(bad)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an sfeditor style-code file"):
        StyleCode.load(tmp_path / "other.pt")
    torch.save({"format": "sfeditor-stylecode", "version": 1, "layout": {"conv_dims": [1]}, "flat": torch.zeros(1)},
               tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="layout"):
        StyleCode.load(tmp_path / "broken.pt")


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(size=48)
    with pytest.raises(ValueError, match="every resolution"):
        GeneratorConfig(size=16, channels={4: 8, 16: 8})
    cfg = GeneratorConfig(**SMALL)
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown generator config"):
        GeneratorConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("size", [64, 256, 512, 1024])
def test_api_at_every_resolution(size):
    """Narrow random generators at each resolution: the whole API runs and shapes follow the layout."""
    ch = {2 ** i: max(4, 32 >> max(0, i - 5)) for i in range(2, int(math.log2(size)) + 1)}
    G = Generator(size=size, style_dim=16, n_mlp=2, channels=ch).eval()
    with torch.no_grad():
        s = G.random_styles(1, seed=0, truncation=0.7)
        img = G.synthesis(s)
        assert img.shape == (1, 3, size, size) and torch.isfinite(img).all()
        assert G.deep_pixels(s, size=32).shape == (1, G.layout.conv_size, 32, 32)
    assert G.n_latent == 2 * int(math.log2(size)) - 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(G):
    """cuDNN convolutions run in TF32 by default (an H100 gave a max difference of 0.002 in [-1, 1]);
    in strict fp32 the GPU must match the CPU closely."""
    s = G.random_styles(2, seed=0)
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        with torch.no_grad():
            cpu = G.synthesis(s)
            gpu_default = G.to("cuda").synthesis(s.to("cuda")).cpu()
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            gpu_fp32 = G.synthesis(s.to("cuda")).cpu()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
        G.to("cpu")
    assert (cpu - gpu_default).abs().max().item() < 5e-3
    assert (cpu - gpu_fp32).abs().max().item() < 5e-4
