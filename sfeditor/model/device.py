"""Device and precision policy: which device runs the models and where bfloat16 pays (one home).

``pick_device("auto")`` takes the first CUDA GPU when there is one, else the CPU.  bfloat16
autocast is used only where it is native (:func:`bf16_is_fast`); emulated bf16 is many times slower.
"""
from __future__ import annotations

import torch

__all__ = ["pick_device", "bf16_is_fast", "choose_bf16"]


def pick_device(pref: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): the first CUDA GPU when there is one, else the CPU; otherwise ``pref``."""
    if pref in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


def bf16_is_fast(device) -> bool:
    """Whether bfloat16 autocast speeds the generator up on ``device``.

    CUDA GPUs with bf16 support, and CPUs with AVX512-BF16 or AMX tiles (there it
    measured 1.75x (inversion) to 4.4x (generator training) on the toy generators).
    Elsewhere (e.g. AVX2-only CPUs) bf16 is emulated: 11-17x *slower* than
    float32 there (``bench/precision.py``, BENCHMARKS.md "Precision").
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            fn = getattr(cpu, probe, None)
            try:
                if fn is not None and fn():
                    return True
            except Exception:       # pragma: no cover - a private probe changed
                pass
    return False


def choose_bf16(requested: bool | None, device) -> tuple[bool, str | None]:
    """Resolve a ``--bf16`` / ``--no-bf16`` / automatic choice for ``device``.

    ``None`` (automatic) turns bf16 on exactly where :func:`bf16_is_fast`.  An
    explicit request is honoured (a recipe may need bf16 to reproduce its numbers)
    but, where bf16 is emulated, comes back with a warning to show the user.
    """
    fast = bf16_is_fast(device)
    if requested is None:
        return fast, None
    if requested and not fast:
        cap = torch.backends.cpu.get_cpu_capability() if torch.device(device).type == "cpu" else "this GPU"
        return True, (f"bfloat16 autocast is emulated on {torch.device(device).type} ({cap}, no AVX512-BF16, AMX "
                      "or native bf16): a step runs several times slower than float32 (BENCHMARKS.md, "
                      "'Precision'); pass --no-bf16, or leave the flag out to choose automatically")
    return bool(requested), None
