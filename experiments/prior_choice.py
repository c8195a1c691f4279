"""Which prior over a v5 run's codes generalises: Gaussian mixtures of K components against one Gaussian,
scored by mean log-likelihood per held-out code (the fit's codes: ``trainer.generator_param_code.param_codes``).

Issue 38: the 64-component mixture scored below one Gaussian on held-out toy-faces codes (tries 4 and 5).

    python experiments/prior_choice.py runs/gen-toy-faces-v5/checkpoint.pt --domain toy-faces --k 1 4 16 64
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from experiments.block_swaps import load, run_arguments  # noqa: E402
from trainer.generator_param_code import param_codes  # noqa: E402


def main(argv=None) -> int:
    p = run_arguments(__doc__, pairs=None, group=False)
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64], help="numbers of components to score")
    p.add_argument("--images", type=int, default=16384)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sklearn.mixture import GaussianMixture

    _, _, P, _, _, _, _ = load(args.checkpoint, args.domain)
    with torch.no_grad():
        x = param_codes(P, args.domain, args.images, "cpu").double().numpy()
    held = min(1024, len(x) // 8)
    fit, test = x[:-held], x[-held:]
    print(f"# {args.checkpoint}: {len(fit)} codes fitted, {held} held out, dim {x.shape[1]}")
    print("| components | held-out log-likelihood / code | fit log-likelihood / code | seconds |")
    print("|---|---|---|---|")
    for k in args.k:
        t = time.time()
        gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, max_iter=200, random_state=0,
                             init_params="k-means++").fit(fit)
        print(f"| {k} | {gm.score(test):.1f} | {gm.score(fit):.1f} | {time.time() - t:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
