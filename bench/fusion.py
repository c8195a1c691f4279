"""FusionNet hierarchy speed: the official FFHQ tree (5 official-width FusionNets, 1024 S layout, |S| = 9088).

Side by side in ONE run (rounds interleave the methods, so a busy machine slows them alike):

``official``   a re-implementation of the published StyleFusion inference code's arithmetic
               (one image, a Python loop over 26 layers x 2 blenders, 1-D matrix-vector
               products, the equalised-LR scale multiplied into every weight on every call,
               nearest upsample / max-pool per layer), fed the same weight files.
``module``     sfeditor's batched FusionNet running its modules (the training path: scales
               applied per call) -- the speed before the folded fast path.
``fast``       what users get: ``load_hierarchy(weights.json)`` + ``hierarchy(codes)`` with
               FRESH codes every call (no cache hit), folded contiguous weights; bf16 weights
               where the CPU runs bf16 natively (``--precision auto``).
``gemm only``  just the fast path's matrix products (the same folded weights, inputs of the same
               row counts, nothing else): what is left once every overhead is gone.
``floor fp32`` / ``floor bf16``  reading every weight once (a sum over all weight tensors):
               the memory-bandwidth floor of any method that must read the weights.
``gemm oneDNN``  the same products through oneDNN with pre-packed weights (private torch ops, not
               bit-identical to the BLAS path: measured only, to show how much the GEMM kernel decides).
``compute floor``  the fast path's FLOPs at the float32 GEMM rate this CPU reaches on a well-shaped
               product ([512, 2560] x [2560, 2560], measured in the same rounds).  At batch 1 the
               fast path is compute-bound (20-26 rows per blender), not bandwidth-bound.

Also checks that ``fast`` and ``official`` agree (max |diff| of the fused S code).

Usage: python bench/fusion.py [--threads 1] [--rounds 5] [--batches 1,16] [--precision auto|float32|bfloat16]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sfeditor import StyleCode, StyleLayout
from sfeditor.model.device import bf16_is_fast
from sfeditor.fusion.fusion_net import FusionNet, FusionNetConfig
from sfeditor.model.generator import default_channels
from sfeditor.fusion.hierarchy import load_hierarchy
from sfeditor.regions.tree import paper_tree

MAX_LAYERS = 18


# --------------------------------------------------- the official arithmetic, per image and per layer
class _OfficialEqualLinear(nn.Module):
    """Scale applied to the weight on every call, fused leaky ReLU (CPU form) on every layer."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.weight, self.bias = nn.Parameter(w.clone()), nn.Parameter(b.clone())
        self.scale, self.lr_mul = 0.01 / math.sqrt(w.shape[1]), 0.01

    def forward(self, x):
        out = F.linear(x, self.weight * self.scale)
        return F.leaky_relu(out + self.bias * self.lr_mul, 0.2) * math.sqrt(2)


class _OfficialBlender(nn.Module):
    def __init__(self, sd: dict, prefix: str):
        super().__init__()
        self.net = nn.Sequential(*[_OfficialEqualLinear(sd[f"{prefix}.{k}.weight"], sd[f"{prefix}.{k}.bias"])
                                   for k in range(5)])

    def forward(self, a, b, i, rgb=False, extra=None):
        x = torch.cat((a[0], b[0]))
        if extra is not None:
            x = torch.cat((x, extra))
        ind = torch.zeros(MAX_LAYERS + 1)
        ind[i] = 1
        if rgb:
            ind[-1] = 1
        x = torch.cat([x, ind.repeat(10)])
        q = torch.sigmoid(self.net(x)).unsqueeze(0)
        return a[0] + q * (b[0] - a[0])


class OfficialFusionNet(nn.Module):
    """The published FusionNet's forward (full mode), one image at a time."""

    def __init__(self, sd: dict, common_layers: int = 5):
        super().__init__()
        self.seg = _OfficialBlender(sd, "blender_segments.disentangle_net")
        self.com = _OfficialBlender(sd, "blender_common.disentangle_net")
        self.common_layers = common_layers
        self.upsample = nn.Upsample(size=512, mode="nearest")

    def up(self, x):
        return self.upsample(x.unsqueeze(0)).squeeze(0)

    @staticmethod
    def pool(x, size):
        return F.max_pool1d(x.unsqueeze(0), 512 // size).squeeze(0)

    def forward(self, s0, s1, s2):
        res = [[], []]
        for rgb in (0, 1):
            for i in range(len(s0[rgb])):
                c = s0[rgb][i].size(1)
                s0u, s1u, s2u = self.up(s0[rgb][i]), self.up(s1[rgb][i]), self.up(s2[rgb][i])
                if i >= self.common_layers:
                    x = self.seg(s0u, s1u, i, False, torch.zeros_like(s1u[0]))
                else:
                    x0 = self.pool(self.com(s0u, s2u, i, False), c)
                    x1 = self.pool(self.com(s1u, s2u, i, False), c)
                    x = self.seg(self.up(x0), self.up(x1), i, False, s2u[0])
                res[rgb].append(self.pool(x, c))
        return res


def official_call(tree, nets: dict, codes: dict):
    """The official hierarchy recursion: node.fusion_net(child1, child2, own), one image."""
    def visit(node, cs):
        own = cs[node.name]
        if node.is_leaf:
            return own
        return nets[node.name](visit(node.children[0], cs), visit(node.children[1], cs), own)
    out = []
    for n in range(len(next(iter(codes.values()))[0][0])):
        one = {k: [[t[n:n + 1] for t in v[0]], [t[n:n + 1] for t in v[1]]] for k, v in codes.items()}
        out.append(visit(tree, one))
    return out


# ---------------------------------------------------------------------------------------- helpers
def write_official_files(folder: Path, layout: StyleLayout, seed: int = 0) -> Path:
    """Official-width FFHQ FusionNets as official weight files + weights JSON (official repo layout)."""
    torch.manual_seed(seed)
    cfg = FusionNetConfig.for_layout(layout, "official")
    spec = {}
    (folder / "weights" / "ffhq").mkdir(parents=True, exist_ok=True)
    tree = paper_tree("faces")
    for node in tree.walk():
        if node.is_leaf:
            continue
        net = FusionNet(cfg)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 30)
        torch.save({"state_dict": net.state_dict()}, folder / "weights" / "ffhq" / f"{node.name}.pt")
        spec[node.name] = f"weights/ffhq/{node.name}.pt"
    js = folder / "weights" / "ffhq_weights.json"
    js.write_text(json.dumps(spec))
    return js


def fresh_codes(layout: StyleLayout, names, batch: int, n_sets: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{n: StyleCode.from_flat(layout, 1 + 0.5 * torch.randn(batch, layout.size, generator=g)) for n in names}
            for _ in range(n_sets)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the CI boxes are shared)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each method's best round is reported")
    p.add_argument("--batches", default="1")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    p.add_argument("--skip-official", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layout = StyleLayout.for_channels(default_channels(1024))
    cpu_flags = ""
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
        cpu_flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    except (OSError, StopIteration):
        pass
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} cpu={cpu_flags or '?'} "
          f"bf16 native={bf16_is_fast('cpu')} |S|={layout.size}")
    with tempfile.TemporaryDirectory() as tmp:
        js = write_official_files(Path(tmp), layout)
        t = time.perf_counter()
        fast = load_hierarchy(js, precision=args.precision)
        load_s = time.perf_counter() - t
        module = load_hierarchy(js, precision="float32")
        module.set_fast_inference(False)
        root = paper_tree("faces")
        official = {name: OfficialFusionNet(torch.load(Path(tmp) / "weights" / "ffhq" / f"{name}.pt",
                                                       weights_only=True)["state_dict"])
                    for name in fast.internal_nodes}
    weights32 = [p.detach() for p in module.parameters() if p.ndim == 2]
    weights16 = [w.to(torch.bfloat16) for w in weights32]
    mb32 = sum(w.numel() * 4 for w in weights32) / 1e6
    dtype = fast.inference_dtype
    print(f"load_hierarchy(json): {load_s:.2f} s; fast path weights: {dtype}; {mb32:.0f} MB of fp32 weights")

    for batch in [int(b) for b in args.batches.split(",")]:
        sets = fresh_codes(layout, fast.node_map, batch, 3 * args.rounds + 1, seed=batch)   # fresh per call
        it = iter(sets)
        times: dict[str, list[float]] = {}

        def run(name, fn):
            t0 = time.perf_counter()
            fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)

        # the fast path's matrix products alone: rows per blender = 2B x coarse layers (LB_align on s1, s2),
        # B x all layers (LB_fuse)
        gemm_in, flops = [], 0
        for net in fast.nets.values():
            for blender, rows in ((net.blender_common, 2 * batch * len(net.coarse_layers(layout))),
                                  (net.blender_segments, batch * layout.n_layers)):
                layers = blender.folded_layers()
                gemm_in.append((torch.randn(rows, layers[0][0].shape[1]).to(layers[0][0].dtype), layers))
                flops += 2 * rows * sum(w.numel() for w, _, _ in layers)
        peak_x, peak_w = torch.randn(512, 2560), torch.randn(2560, 2560)

        def gemm_only():
            for x, layers in gemm_in:
                for w, _, _ in layers:
                    x = F.linear(x, w)

        mk = getattr(torch.ops, "mkldnn", None)
        onednn = None
        if dtype == torch.float32 and mk is not None and hasattr(mk, "_linear_pointwise"):
            try:    # the same products through oneDNN with pre-packed weights (private torch ops; not
                    # bit-identical to the BLAS path, so only measured here, to show the GEMM kernel's share)
                packed = [(x, [mk._reorder_linear_weight(w) for w, _, _ in layers]) for x, layers in gemm_in]
                mk._linear_pointwise(packed[0][0], packed[0][1][0], None, "none", [], "")

                def onednn():
                    for x, ws in packed:
                        for w in ws:
                            x = mk._linear_pointwise(x, w, None, "none", [], "")
            except (RuntimeError, AttributeError):
                onednn = None

        methods = {
            "fast": lambda: fast(next(it)),
            "gemm only": gemm_only,
            "peak gemm": lambda: F.linear(peak_x, peak_w),
            "module": lambda: module(next(it), use_cache=False),
            "floor fp32": lambda: [w.sum() for w in weights32],
            "floor bf16": lambda: [w.sum() for w in weights16],
        }
        if onednn is not None:
            methods["gemm oneDNN"] = onednn
        if not args.skip_official:
            methods["official"] = lambda: official_call(
                root, official, {k: [v.conv, v.rgb] for k, v in next(it).items()})
        with torch.no_grad():
            # agreement check (and warm-up): the same codes through fast and official
            c = sets[-1]
            out = fast(c)
            if not args.skip_official:
                ref = official_call(root, official, {k: [v.conv, v.rgb] for k, v in c.items()})
                ref_flat = torch.cat([torch.cat([torch.cat(r[0], 1), torch.cat(r[1], 1)], 1) for r in ref])
                print(f"batch {batch}: max |fast - official| = {(out.flat() - ref_flat).abs().max().item():.2e}")
            for _ in range(args.rounds):
                for name, fn in methods.items():
                    run(name, fn)
        peak_flops = 2 * 512 * 2560 * 2560
        rate = {k: peak_flops / min(v) for k, v in times.items() if k == "peak gemm"}["peak gemm"]
        times["compute floor"] = [flops / (peak_flops / t) for t in times.pop("peak gemm")]
        best = {k: min(v) for k, v in times.items()}
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\nbatch {batch}: fast path = {flops / 1e9:.2f} GFLOP per call; fp32 GEMM peak here "
              f"{rate / 1e9:.1f} GFLOP/s; fast runs at {flops / best['fast'] / 1e9:.1f} GFLOP/s, "
              f"its products alone at {flops / best['gemm only'] / 1e9:.1f}")
        floor = best["floor bf16"] if dtype == torch.bfloat16 else best["floor fp32"]
        print(f"\nbatch {batch}, {args.rounds} interleaved rounds (best / median ms; ratios from the best)")
        print(f"| {'method':<13} | {'best ms':>8} | {'median ms':>9} | {'official / this':>15} | {'this / floor':>12} |")
        print(f"|{'-' * 15}|{'-' * 10}|{'-' * 11}|{'-' * 17}|{'-' * 14}|")
        for name in ("official", "module", "fast", "gemm only", "gemm oneDNN", "compute floor",
                     "floor fp32", "floor bf16"):
            if name not in best:
                continue
            sp = f"{best['official'] / best[name]:.1f}x" if "official" in best else "-"
            print(f"| {name:<13} | {1000 * best[name]:>8.1f} | {1000 * med[name]:>9.1f} | {sp:>15} | "
                  f"{best[name] / floor:>11.2f}x |", flush=True)
        print(f"(this / floor: against the {'bf16' if dtype == torch.bfloat16 else 'fp32'} weight read, the precision "
              f"the fast path uses)")


if __name__ == "__main__":
    main()
