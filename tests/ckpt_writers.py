"""Test-only writers of foreign StyleGAN2 checkpoint formats, and reference forwards.

Each writer takes an sfeditor :class:`Generator` and writes the same weights
the way the foreign code base stores them:

* rosinality ``.pt`` (``g_ema`` + ``latent_avg``, optional training snapshot
  with ``args`` as ``argparse.Namespace``);
* NVIDIA stylegan2-ada-pytorch ``.pkl``: persistent objects pickled through
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
  ``meta = {type, version, module_src, class_name, state}``;
* NVIDIA TensorFlow ``.pkl``: ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``.

While a pickle is written, fake modules are registered in ``sys.modules``
under the real names (``torch_utils.persistence``, ``dnnlib.util``,
``dnnlib.tflib.network``) so pickle records those names; they are removed
afterwards.  The layouts follow the public sources (NVlabs/stylegan2
``training/networks_stylegan2.py`` and ``dnnlib/tflib/network.py``, NVlabs
stylegan2-ada-pytorch ``training/networks.py`` and ``torch_utils/persistence.py``).

``tf_reference_images`` / ``ada_reference_images`` render from the *written*
tensors with each code base's own conventions (TF weight layout and the kernel
flip inside ``upsample_conv_2d``; ADA's un-flipped transposed conv and
ToRGB style gain), independently of sfeditor's converters.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from sfeditor.model.generator import Generator, GeneratorConfig
from sfeditor.model.upfirdn import make_kernel, upfirdn2d

SQRT2 = math.sqrt(2.0)
HARMLESS_SRC = "# network source code would be here\n"


# ------------------------------------------------------------------ fakes
class _FakeEasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def _fake_reconstruct_persistent_obj(meta):  # pragma: no cover - never called by the tests
    raise RuntimeError("test fake: not for loading")


class _FakeTFNetwork:
    """Pickles like dnnlib.tflib.network.Network: NEWOBJ + the __getstate__ dict."""

    def __init__(self, state: dict):
        self._state = state

    def __getstate__(self):
        return self._state


class _Persistent:
    """Pickles like an object of a @persistence.persistent_class."""

    def __init__(self, class_name: str, state: dict, module_src: str):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return (_fake_reconstruct_persistent_obj, (self.meta,))


@contextlib.contextmanager
def fake_nvidia_modules():
    """Register the fakes under NVIDIA's module names while pickling."""
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "dnnlib.tflib",
             "dnnlib.tflib.network"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    _fake_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _fake_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _fake_reconstruct_persistent_obj
    _FakeEasyDict.__module__, _FakeEasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    mods["dnnlib.util"].EasyDict = _FakeEasyDict
    mods["dnnlib"].EasyDict = _FakeEasyDict
    _FakeTFNetwork.__module__, _FakeTFNetwork.__qualname__ = "dnnlib.tflib.network", "Network"
    mods["dnnlib.tflib.network"].Network = _FakeTFNetwork
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


# ------------------------------------------------------- generator helpers
def random_generator(seed: int = 0, config: GeneratorConfig | None = None, **kwargs) -> Generator:
    """A generator with every parameter non-trivial (noise strengths, biases, w_avg)."""
    torch.manual_seed(seed)
    if config is not None:
        config = GeneratorConfig.from_dict(config.to_dict())
    G = Generator(config, **kwargs).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.uniform_(0.2, 0.6)
            elif name.endswith(".bias") and "style." not in name:
                p.add_(torch.randn_like(p) * 0.2)
        G.w_avg.copy_(torch.randn(G.style_dim) * 0.3)
    return G


def rosinality_state(G: Generator) -> dict[str, torch.Tensor]:
    """G's g_ema state dict as rosinality writes it (kernels included, no w_avg)."""
    return OrderedDict((k, v.detach().clone()) for k, v in G.state_dict().items() if k != "w_avg")


def write_rosinality(G: Generator, path, latent_avg: bool = True, training: bool = False, bare: bool = False,
                     drop_kernels: bool = False, legacy: bool = False) -> None:
    sd = rosinality_state(G)
    if drop_kernels:
        sd = OrderedDict((k, v) for k, v in sd.items() if not k.endswith(".kernel"))
    if bare:
        obj = sd
    else:
        obj = {"g_ema": sd}
        if latent_avg:
            obj["latent_avg"] = G.w_avg.detach().clone()
        if training:
            other = random_generator(123, G.config)
            obj.update(g=rosinality_state(other), d={"convs.0.0.weight": torch.randn(4, 3, 1, 1)},
                       g_optim={"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99)}]},
                       d_optim={"state": {}, "param_groups": []},
                       args=argparse.Namespace(size=G.size, latent=G.style_dim, n_mlp=G.config.n_mlp,
                                               channel_multiplier=2, path="data/lmdb", lr=0.002),
                       ada_aug_p=0.25)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


# ------------------------------------------------------------------- ADA
def _module_state(params=None, buffers=None, modules=None, init_kwargs=None, **attrs) -> dict:
    """A torch.nn.Module __dict__ as NVIDIA's torch 1.x pickles have it."""
    state = {"training": False,
             "_parameters": OrderedDict((k, torch.nn.Parameter(v.detach().clone(), requires_grad=False))
                                        for k, v in (params or {}).items()),
             "_buffers": OrderedDict((k, v.detach().clone()) for k, v in (buffers or {}).items()),
             "_non_persistent_buffers_set": set(),
             "_backward_hooks": OrderedDict(), "_forward_hooks": OrderedDict(),
             "_forward_pre_hooks": OrderedDict(), "_state_dict_hooks": OrderedDict(),
             "_load_state_dict_pre_hooks": OrderedDict(),
             "_modules": OrderedDict(modules or {}),
             "_init_args": (), "_init_kwargs": _FakeEasyDict(init_kwargs or {})}
    state.update(attrs)
    return state


def ada_flat(G: Generator) -> dict[str, torch.Tensor]:
    """G's weights under stylegan2-ada-pytorch state_dict names and layouts."""
    sd = G.state_dict()
    out = {}
    for i in range(G.config.n_mlp):
        out[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        out[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
    out["mapping.w_avg"] = sd["w_avg"]
    out["synthesis.b4.const"] = sd["input.input"][0]

    def layer(prefix, ros, noise):
        out[f"{prefix}.weight"] = sd[f"{ros}.conv.weight"][0]                    # [O,I,3,3]
        out[f"{prefix}.affine.weight"] = sd[f"{ros}.conv.modulation.weight"]
        out[f"{prefix}.affine.bias"] = sd[f"{ros}.conv.modulation.bias"]
        out[f"{prefix}.noise_strength"] = sd[f"{ros}.noise.weight"].reshape(())
        out[f"{prefix}.bias"] = sd[f"{ros}.activate.bias"]
        out[f"{prefix}.noise_const"] = sd[f"noises.noise_{noise}"][0, 0]        # [R,R]

    def torgb(prefix, ros):
        out[f"{prefix}.weight"] = sd[f"{ros}.conv.weight"][0]                    # [3,I,1,1]
        out[f"{prefix}.affine.weight"] = sd[f"{ros}.conv.modulation.weight"]
        out[f"{prefix}.affine.bias"] = sd[f"{ros}.conv.modulation.bias"]
        out[f"{prefix}.bias"] = sd[f"{ros}.bias"].reshape(3)

    layer("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k in range(G.log_size - 2):
        r = 2 ** (k + 3)
        layer(f"synthesis.b{r}.conv0", f"convs.{2 * k}", 2 * k + 1)
        layer(f"synthesis.b{r}.conv1", f"convs.{2 * k + 1}", 2 * k + 2)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{k}")
    return {k: v.detach().clone() for k, v in out.items()}


def _ada_tree(flat: dict[str, torch.Tensor], G: Generator, module_src: str, plain_fc0: bool = False):
    """Nested persistent objects for G_ema (names/attributes as in ADA's networks.py)."""
    fir = make_kernel([1, 3, 3, 1])          # ADA setup_filter: normalised outer product

    def P(name, **kw):
        return _Persistent(name, _module_state(**kw), module_src)

    def fc(prefix, lr, act):
        params = {"weight": flat[f"{prefix}.weight"], "bias": flat[f"{prefix}.bias"]}
        if plain_fc0 and prefix == "mapping.fc0":     # a plain torch.nn module pickled by reference
            m = torch.nn.Module()
            m.weight = torch.nn.Parameter(params["weight"].clone(), requires_grad=False)
            m.bias = torch.nn.Parameter(params["bias"].clone(), requires_grad=False)
            return m
        return P("FullyConnectedLayer", params=params, activation=act, weight_gain=lr / math.sqrt(
            params["weight"].shape[1]), bias_gain=lr)

    def syn_layer(prefix, res, up):
        return P("SynthesisLayer", params={k: flat[f"{prefix}.{k}"] for k in ("weight", "noise_strength", "bias")},
                 buffers={"resample_filter": fir, "noise_const": flat[f"{prefix}.noise_const"]},
                 modules={"affine": fc(f"{prefix}.affine", 1, "linear")},
                 init_kwargs=dict(resolution=res, up=up, conv_clamp=256), resolution=res, up=up,
                 use_noise=True, activation="lrelu", conv_clamp=256, padding=1)

    def torgb(prefix):
        return P("ToRGBLayer", params={"weight": flat[f"{prefix}.weight"], "bias": flat[f"{prefix}.bias"]},
                 modules={"affine": fc(f"{prefix}.affine", 1, "linear")}, conv_clamp=256)

    blocks = OrderedDict()
    for res in [2 ** i for i in range(2, G.log_size + 1)]:
        mods = OrderedDict()
        params = {}
        if res == 4:
            params["const"] = flat["synthesis.b4.const"]
        else:
            mods["conv0"] = syn_layer(f"synthesis.b{res}.conv0", res, 2)
        mods["conv1"] = syn_layer(f"synthesis.b{res}.conv1", res, 1)
        mods["torgb"] = torgb(f"synthesis.b{res}.torgb")
        blocks[f"b{res}"] = P("SynthesisBlock", params=params, buffers={"resample_filter": fir}, modules=mods,
                              resolution=res, architecture="skip", is_last=res == G.size, use_fp16=res >= 32)
    synthesis = P("SynthesisNetwork", modules=blocks, block_resolutions=list(map(int, (2 ** i for i in range(
        2, G.log_size + 1)))), img_resolution=G.size, img_channels=3, w_dim=G.style_dim)
    fcs = OrderedDict((f"fc{i}", fc(f"mapping.fc{i}", 0.01, "lrelu")) for i in range(G.config.n_mlp))
    mapping = P("MappingNetwork", buffers={"w_avg": flat["mapping.w_avg"]}, modules=fcs, z_dim=G.style_dim,
                c_dim=0, w_dim=G.style_dim, num_ws=G.n_latent, num_layers=G.config.n_mlp, w_avg_beta=0.995)
    kwargs = dict(z_dim=G.style_dim, c_dim=0, w_dim=G.style_dim, img_resolution=G.size, img_channels=3,
                  mapping_kwargs=_FakeEasyDict(num_layers=G.config.n_mlp),
                  synthesis_kwargs=_FakeEasyDict(channel_base=16384, channel_max=512, num_fp16_res=4,
                                                 conv_clamp=256))
    return P("Generator", modules={"synthesis": synthesis, "mapping": mapping}, init_kwargs=kwargs,
             z_dim=G.style_dim, c_dim=0, w_dim=G.style_dim, img_resolution=G.size, img_channels=3,
             num_ws=G.n_latent)


def write_ada_pkl(G: Generator, path, module_src: str = HARMLESS_SRC, plain_fc0: bool = False,
                  protocol: int = 3, extra_flat: dict | None = None, replace: dict | None = None) -> dict:
    """Write an ADA-style snapshot ``{G, D, G_ema, augment_pipe, training_set_kwargs}``.

    ``G`` (the training copy) holds different weights, so a loader that picks
    it instead of ``G_ema`` fails the image comparison.  ``extra_flat`` adds
    tensors to G_ema's flat dict (unknown-name tests); ``replace`` swaps entries
    of the pickled dict (malicious-payload tests).  Returns G_ema's flat dict.
    """
    flat = ada_flat(G)
    flat.update(extra_flat or {})
    other = random_generator(99, G.config)
    with fake_nvidia_modules():
        g_ema = _ada_tree(flat, G, module_src, plain_fc0)
        g_train = _ada_tree(ada_flat(other), other, module_src)
        D = _Persistent("Discriminator", _module_state(params={"b4.out.weight": torch.randn(1, 4)}), module_src)
        aug = _Persistent("AugmentPipe", _module_state(buffers={"p": torch.tensor(0.3)}), module_src)
        data = dict(G=g_train, D=D, G_ema=g_ema, augment_pipe=aug,
                    training_set_kwargs=_FakeEasyDict(path="~/datasets/ffhq.zip", resolution=G.size, use_labels=False))
        data.update(replace or {})
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    return flat


def write_persistent_pickle(path, tree_state: dict, module_src: str = HARMLESS_SRC, class_name: str = "Generator"):
    """A pickle ``{"G_ema": <persistent class_name with state>}`` (for hand-made trees)."""
    with fake_nvidia_modules():
        with open(path, "wb") as f:
            pickle.dump({"G_ema": _Persistent(class_name, tree_state, module_src)}, f, protocol=4)


def persistent(class_name: str, module_src: str = HARMLESS_SRC, **state_kw):
    return _Persistent(class_name, _module_state(**state_kw), module_src)


# -------------------------------------------------------------------- TF
def tf_vars(G: Generator) -> tuple[dict, dict, dict]:
    """(Gs own vars, mapping vars, synthesis vars) as numpy, in TF names and layouts."""
    sd = {k: v.detach().double().numpy() for k, v in G.state_dict().items()}
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    own = {"lod": np.float32(0.0), "dlatent_avg": f32(sd["w_avg"])}
    mapping = {}
    for i in range(G.config.n_mlp):
        mapping[f"Dense{i}/weight"] = f32(sd[f"style.{i + 1}.weight"].T)             # [in, out]
        mapping[f"Dense{i}/bias"] = f32(sd[f"style.{i + 1}.bias"])
    syn = {"4x4/Const/const": f32(sd["input.input"])}

    def layer(scope, ros, flip):
        w = sd[f"{ros}.conv.weight"][0].transpose(2, 3, 1, 0)                       # [O,I,kh,kw] -> [kh,kw,I,O]
        if flip:                     # TF's upsample_conv_2d flips its kernel; store what makes it equal
            w = w[::-1, ::-1]
        syn[f"{scope}/weight"] = f32(w)
        syn[f"{scope}/mod_weight"] = f32(sd[f"{ros}.conv.modulation.weight"].T)      # [w_dim, I]
        syn[f"{scope}/mod_bias"] = f32(sd[f"{ros}.conv.modulation.bias"] - 1.0)      # TF adds the 1 at run time
        syn[f"{scope}/noise_strength"] = np.float32(sd[f"{ros}.noise.weight"][0])    # a numpy scalar
        syn[f"{scope}/bias"] = f32(sd[f"{ros}.activate.bias"])

    def torgb(scope, ros):
        syn[f"{scope}/weight"] = f32(sd[f"{ros}.conv.weight"][0].transpose(2, 3, 1, 0))
        syn[f"{scope}/mod_weight"] = f32(sd[f"{ros}.conv.modulation.weight"].T)
        syn[f"{scope}/mod_bias"] = f32(sd[f"{ros}.conv.modulation.bias"] - 1.0)
        syn[f"{scope}/bias"] = f32(sd[f"{ros}.bias"].reshape(3))

    layer("4x4/Conv", "conv1", False)
    torgb("4x4/ToRGB", "to_rgb1")
    for k in range(G.log_size - 2):
        r = 2 ** (k + 3)
        layer(f"{r}x{r}/Conv0_up", f"convs.{2 * k}", True)
        layer(f"{r}x{r}/Conv1", f"convs.{2 * k + 1}", False)
        torgb(f"{r}x{r}/ToRGB", f"to_rgbs.{k}")
    for n in range(G.num_noises):
        syn[f"noise{n}"] = f32(sd[f"noises.noise_{n}"])
    return own, mapping, syn


def _tf_net(name, variables: dict, components=None, src=HARMLESS_SRC, func="training.networks_stylegan2.G_main"):
    return _FakeTFNetwork({"version": 4, "name": name, "static_kwargs": {"resolution": 0},
                           "components": dict(components or {}), "build_module_src": src,
                           "build_func_name": func, "variables": list(variables.items())})


def write_tf_pkl(G: Generator, path, build_src: str = HARMLESS_SRC, protocol: int = 2,
                 only_gs: bool = False, extra_syn: dict | None = None) -> dict:
    """Write ``(G, D, Gs)`` like NVIDIA's TF pickles; returns Gs's flat variable dict."""
    own, mapping, syn = tf_vars(G)
    syn.update(extra_syn or {})
    o_own, o_map, o_syn = tf_vars(random_generator(77, G.config))
    with fake_nvidia_modules():
        def gen(name, own_, map_, syn_):
            return _tf_net(name, own_, {"synthesis": _tf_net("G_synthesis", syn_, src=build_src),
                                        "mapping": _tf_net("G_mapping", map_, src=build_src)}, src=build_src)
        gs = gen("Gs", own, mapping, syn)
        obj = gs if only_gs else (gen("G", o_own, o_map, o_syn),
                                  _tf_net("D", {"4x4/Dense0/weight": np.ones((4, 2), np.float32)}, src=build_src),
                                  gs)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    flat = {k: v for k, v in own.items()}
    flat.update({f"mapping/{k}": v for k, v in mapping.items()})
    flat.update({f"synthesis/{k}": v for k, v in syn.items()})
    return flat


# ------------------------------------------------------ reference renders
def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _lrelu(x):
    return F.leaky_relu(x, 0.2) * SQRT2


def _fir_up_after_transpose(x):    # both code bases: pad (1, 1) around the [1,3,3,1] filter x 4
    return upfirdn2d(x, make_kernel([1, 3, 3, 1]) * 4, pad=(1, 1))


def _skip_up(img):                 # upsample_2d / upsample2d: pads (2, 1), gain 4
    return upfirdn2d(img, make_kernel([1, 3, 3, 1]) * 4, up=2, pad=(2, 1))


def _mapping(z, layers, lrmul=0.01):
    x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for w, b in layers:            # w [out, in]
        x = _lrelu(x @ (w * lrmul / math.sqrt(w.shape[1])).t() + b * lrmul)
    return x


@torch.no_grad()
def tf_reference_images(v: dict, z: torch.Tensor) -> torch.Tensor:
    """Render like NVlabs/stylegan2 G_synthesis_stylegan2 (skip architecture, const noise)."""
    n_mlp = sum(1 for k in v if k.startswith("mapping/Dense") and k.endswith("/weight"))
    w = _mapping(z, [(_t(v[f"mapping/Dense{i}/weight"]).t(), _t(v[f"mapping/Dense{i}/bias"])) for i in range(n_mlp)])
    D = w.shape[1]
    size = max(int(k.split("/")[1].split("x")[0]) for k in v if k.startswith("synthesis/") and "x" in k.split("/")[1])

    def modconv(x, scope, up=False, demod=True):
        W = _t(v[f"synthesis/{scope}/weight"])                       # [kh,kw,I,O]
        kh, kw, I, O = W.shape
        W = W / math.sqrt(kh * kw * I)                              # get_weight runtime coef (gain 1)
        s = w @ (_t(v[f"synthesis/{scope}/mod_weight"]) / math.sqrt(D)) + _t(v[f"synthesis/{scope}/mod_bias"]) + 1
        out = []
        for b in range(x.shape[0]):
            ww = W * s[b][None, None, :, None]
            if demod:
                ww = ww * torch.rsqrt(ww.square().sum([0, 1, 2]) + 1e-8)[None, None, None, :]
            if up:                   # upsample_conv_2d: flip, conv2d_transpose (VALID, stride 2), FIR
                wt = ww.flip([0, 1]).permute(2, 3, 0, 1)            # transpose filter [kh,kw,O,I] == torch [I,O,kh,kw]
                y = _fir_up_after_transpose(F.conv_transpose2d(x[b:b + 1], wt, stride=2))
            else:                    # tf.nn.conv2d SAME (correlation)
                y = F.conv2d(x[b:b + 1], ww.permute(3, 2, 0, 1), padding=kh // 2)
            out.append(y)
        return torch.cat(out)

    def layer(x, scope, idx, up=False):
        x = modconv(x, scope, up)
        x = x + _t(v[f"synthesis/noise{idx}"]) * float(np.asarray(v[f"synthesis/{scope}/noise_strength"]))
        return _lrelu(x + _t(v[f"synthesis/{scope}/bias"])[None, :, None, None])

    def torgb(x, scope):
        return modconv(x, scope, demod=False) + _t(v[f"synthesis/{scope}/bias"])[None, :, None, None]

    x = _t(v["synthesis/4x4/Const/const"]).repeat(z.shape[0], 1, 1, 1)
    x = layer(x, "4x4/Conv", 0)
    img = torgb(x, "4x4/ToRGB")
    for res in range(3, int(math.log2(size)) + 1):
        r = 2 ** res
        x = layer(x, f"{r}x{r}/Conv0_up", res * 2 - 5, up=True)
        x = layer(x, f"{r}x{r}/Conv1", res * 2 - 4)
        img = _skip_up(img) + torgb(x, f"{r}x{r}/ToRGB")
    return img


@torch.no_grad()
def ada_reference_images(p: dict, z: torch.Tensor) -> torch.Tensor:
    """Render like stylegan2-ada-pytorch's Generator (noise_mode='const', no clamping reached)."""
    n_mlp = sum(1 for k in p if k.startswith("mapping.fc") and k.endswith(".weight"))
    w = _mapping(z, [(p[f"mapping.fc{i}.weight"], p[f"mapping.fc{i}.bias"]) for i in range(n_mlp)])
    size = max(int(k.split(".")[1][1:]) for k in p if k.startswith("synthesis.b"))

    def affine(prefix):             # FullyConnectedLayer(w_dim, I, bias_init=1), lr 1
        W = p[f"{prefix}.affine.weight"]
        return w @ (W / math.sqrt(W.shape[1])).t() + p[f"{prefix}.affine.bias"]

    def modconv(x, weight, styles, up=False, demod=True):
        out = []
        for b in range(x.shape[0]):
            ww = weight * styles[b][None, :, None, None]                 # [O,I,k,k]
            if demod:
                ww = ww * torch.rsqrt(ww.square().sum([1, 2, 3]) + 1e-8)[:, None, None, None]
            if up:                   # conv2d_resample, up=2, flip_weight=False: transposed conv, no flip
                y = _fir_up_after_transpose(F.conv_transpose2d(x[b:b + 1], ww.transpose(0, 1), stride=2))
            else:
                y = F.conv2d(x[b:b + 1], ww, padding=ww.shape[-1] // 2)
            out.append(y)
        return torch.cat(out)

    def layer(x, prefix, up=False):
        x = modconv(x, p[f"{prefix}.weight"], affine(prefix), up)
        x = x + p[f"{prefix}.noise_const"] * p[f"{prefix}.noise_strength"]
        return _lrelu(x + p[f"{prefix}.bias"][None, :, None, None])

    def torgb(x, prefix):
        W = p[f"{prefix}.weight"]
        styles = affine(prefix) / math.sqrt(W.shape[1] * W.shape[2] * W.shape[3])
        return modconv(x, W, styles, demod=False) + p[f"{prefix}.bias"][None, :, None, None]

    x = p["synthesis.b4.const"][None].repeat(z.shape[0], 1, 1, 1)
    x = layer(x, "synthesis.b4.conv1")
    img = torgb(x, "synthesis.b4.torgb")
    for res in range(3, int(math.log2(size)) + 1):
        r = 2 ** res
        x = layer(x, f"synthesis.b{r}.conv0", up=True)
        x = layer(x, f"synthesis.b{r}.conv1")
        img = _skip_up(img) + torgb(x, f"synthesis.b{r}.torgb")
    return img


def tiny_e4e_checkpoint(path, n_styles: int, resolution: int, seed: int = 0) -> None:
    """An e4e-format checkpoint (full IR-SE-50 key layout) whose tensors share one storage (a small file)."""
    from sfeditor.images.e4e import Encoder4Editing

    with torch.device("meta"):                                 # shapes only
        want = Encoder4Editing(n_styles).state_dict()
    base = torch.randn(max(v.numel() for v in want.values()), generator=torch.Generator().manual_seed(seed)) * 0.05
    sd = {}
    for k, v in want.items():
        if k.endswith("num_batches_tracked"):
            sd[f"encoder.{k}"] = torch.zeros((), dtype=torch.long)
        elif k.endswith("running_var") or k.endswith("res_layer.0.weight") or k.endswith("res_layer.4.weight"):
            sd[f"encoder.{k}"] = torch.ones(v.shape)
        else:
            sd[f"encoder.{k}"] = base[:v.numel()].view(v.shape)
    torch.save({"state_dict": sd, "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": resolution},
                "latent_avg": torch.randn(n_styles, 512, generator=torch.Generator().manual_seed(seed + 1))}, path)
