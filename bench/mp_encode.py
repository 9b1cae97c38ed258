"""Benchmark: our matching-pursuit encoder against SAELens's reference, side by side.

Config (the SAELens anchor's MP encoder, docs/design.md): k=32 fixed steps, batch 4096, d_in 576,
d_sae 4608, unit-norm random dictionary, ReLU selection, 2 threads; median of --repeats runs. Needs
sae_lens, so run it with the second venv (our package importable via `pip install --no-deps -e .`):

    .venv-saelens/bin/python bench/mp_encode.py

`--train-step` instead times one MP-SAE training step (Gram rebuild, pursuit, backward,
Adam, renormalisation) next to a TopK step on the same batch; it needs no sae_lens:

    .venv/bin/python bench/mp_encode.py --train-step
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_hooks.sae import make_sae  # noqa: E402
from sae_hooks.sae.pursuit import matching_pursuit, padded_gram  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def train_step(args: argparse.Namespace) -> None:
    """Median time of each part of an MP training step, and of a whole TopK step."""
    g = torch.Generator().manual_seed(1)  # not 0: make_sae(seed=0) draws its dictionary from 0
    x = torch.randn(args.batch, args.d_in, generator=g)

    def parts(arch: str) -> list[float]:
        sae = make_sae(arch, args.d_in, args.d_sae, k=args.k, seed=0)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
        rows = []
        for _ in range(args.repeats + 1):  # the first step warms up
            t0 = time.perf_counter()
            if arch == "matching_pursuit":
                sae.gram()  # rebuilt: the last step changed W_dec
            t1 = time.perf_counter()
            out = sae.training_loss(x)
            t2 = time.perf_counter()
            out.loss.backward()
            t3 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sae.after_step(out)
            t4 = time.perf_counter()
            rows.append([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0])
        return [statistics.median(col) for col in zip(*rows[1:])]

    mp, topk = parts("matching_pursuit"), parts("topk")
    print(f"Train step: batch {args.batch}, {args.d_in}->{args.d_sae}, k={args.k}, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"{'':12s}{'Gram':>8s}{'forward':>9s}{'backward':>9s}{'Adam+norm':>10s}{'total':>8s}")
    for name, p in (("matching_pursuit", mp), ("topk", topk)):
        print(f"{name:12s}" if len(name) <= 12 else name + "\n" + " " * 12, end="")
        print(f"{p[0]:8.3f}{p[1]:9.3f}{p[2]:9.3f}{p[3]:10.3f}{p[4]:8.3f}")
    print(f"MP step / TopK step: {mp[4] / topk[4]:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-step", action="store_true",
                    help="time an MP training step (and a TopK step) instead; no sae_lens needed")
    args = ap.parse_args()
    if args.train_step:
        torch.set_num_threads(args.threads)
        train_step(args)
        return
    from sae_lens.saes.matching_pursuit_sae import _encode_matching_pursuit

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    D = torch.randn(args.d_sae, args.d_in, generator=g)
    D /= D.norm(dim=-1, keepdim=True)
    x = torch.randn(args.batch, args.d_in, generator=g)
    k = args.k

    def theirs_fwd():
        with torch.no_grad():
            return _encode_matching_pursuit(x, D, 0.0, max_iterations=k,
                                            stop_on_duplicate_support=False)

    def ours_fwd(gram):
        with torch.no_grad():
            res = matching_pursuit(x, D, k, gram=gram)
            z = torch.zeros(args.batch, args.d_sae).scatter_add_(1, res.indices, res.values)
            return z

    def theirs_fb():
        Dp = D.clone().requires_grad_(True)
        z = _encode_matching_pursuit(x, Dp, 0.0, max_iterations=k, stop_on_duplicate_support=False)
        loss = (z @ Dp - x).pow(2).sum()
        loss.backward()
        return Dp.grad

    def ours_fb():
        Dp = D.clone().requires_grad_(True)
        res = matching_pursuit(x, Dp, k, gram=padded_gram(D))  # Gram rebuilt: D changes in training
        loss = res.residual.pow(2).sum()  # x - x_hat = residual
        loss.backward()
        return Dp.grad

    gram = padded_gram(D)
    t_gram, _ = _median_time(lambda: padded_gram(D), args.repeats)
    t_ref, z_ref = _median_time(theirs_fwd, args.repeats)
    t_ours_cached, z_ours = _median_time(lambda: ours_fwd(gram), args.repeats)
    t_ours_build, _ = _median_time(lambda: ours_fwd(padded_gram(D)), args.repeats)
    t_ref_fb, g_ref = _median_time(theirs_fb, args.repeats)
    t_ours_fb, g_ours = _median_time(ours_fb, args.repeats)

    diff = (z_ours - z_ref).abs().max().item()
    same_support = torch.equal(z_ours != 0, z_ref != 0)
    gdiff = ((g_ours - g_ref).abs().max() / g_ref.abs().max()).item()
    print(f"MP encode: batch {args.batch}, {args.d_in}->{args.d_sae}, k={k}, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"{'':32s}{'SAELens':>10s}{'ours':>10s}{'ratio':>8s}")
    print(f"{'forward (Gram cached)':32s}{t_ref:10.3f}{t_ours_cached:10.3f}{t_ref / t_ours_cached:8.1f}x")
    print(f"{'forward (incl. Gram build)':32s}{t_ref:10.3f}{t_ours_build:10.3f}{t_ref / t_ours_build:8.1f}x")
    print(f"{'forward+backward (incl. Gram)':32s}{t_ref_fb:10.3f}{t_ours_fb:10.3f}{t_ref_fb / t_ours_fb:8.1f}x")
    print(f"Gram build alone: {t_gram:.3f} s")
    print(f"max |z_ours - z_saelens| = {diff:.2e}; same support: {same_support}")
    print(f"max |dD_ours - dD_saelens| / max |dD_saelens| = {gdiff:.2e}")


if __name__ == "__main__":
    main()
