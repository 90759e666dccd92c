"""Self-attention forms for the supernet's 2-dimensional heads, measured interleaved in one process.

Usage::

    python bench/bench_attention.py                  # the operator alone, then Full supernet steps
    python bench/bench_attention.py --rounds 8 --steps 10

The speed of this machine kind drifts by up to a third between minutes (other virtual machines on
the host), so two forms are only compared inside one process, alternating round by round on the same
batches and the same sampled paths, and each round's ratio is reported with the median rate.

Forms: "fused" is torch's `scaled_dot_product_attention` (the CPU flash kernel); "plain" is
softmax(q k^T / sqrt(d)) v on the whole batch; "chunked-autograd" is the plain form on chunks of the
batch whose scores fit in cache, differentiated by autograd; "chunked" is nasrec's `attention` (the
same chunks, with every product computed with the head dimension as the output's rows, forward and
backward). First the operator alone, forward and backward, on
[512, 8, T, 2] at T = 16, 32, 48, 64 (the Full space's sparse widths); then Full supernet training
steps (Criteo shape, batch 512, sampled paths, Adagrad with clipping, as `bench_supernet.py`) with the
transformer operator's attention (`nasrec.model.ops.transformer.attention`) swapped between rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, machine_line  # bench/ is not a package
from bench_supernet import CRITEO_CAPPED, batches, path_sampler, train_steps

from nasrec.model.ops import transformer
from nasrec.model.supernet import Supernet
from nasrec.space.space import NASREC_FULL
from nasrec.train.optim import build_optimizer


def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in one piece."""
    return torch.matmul(torch.softmax(torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)), -1), v)


def chunked_autograd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The plain form on chunks of the batch whose scores fit in cache, differentiated by autograd."""
    _, H, T, d = q.shape
    rows = max(1, transformer.ATTENTION_CHUNK // (H * T * T))
    parts = zip((q * d**-0.5).split(rows), k.split(rows), v.split(rows), strict=True)
    return torch.cat([torch.matmul(torch.softmax(torch.matmul(a, b.transpose(-1, -2)), -1), c) for a, b, c in parts])


FORMS = {
    "fused": F.scaled_dot_product_attention,
    "plain": plain,
    "chunked-autograd": chunked_autograd,
    "chunked": transformer.attention,
}


def summary(rates: dict[str, list[float]], base: str, second: str = "chunked-autograd") -> dict[str, dict]:
    """Median rate of each form and its per-round ratios to `base` and to `second`."""
    out = {}
    for name, r in rates.items():
        ratios = [a / b for a, b in zip(r, rates[base], strict=True)]
        ratios2 = [a / b for a, b in zip(r, rates[second], strict=True)]
        out[name] = {
            "median": round(statistics.median(r), 1),
            "ratio_to_" + base: round(statistics.median(ratios), 3),
            "round_ratios": [round(x, 3) for x in ratios],
            "ratio_to_" + second: round(statistics.median(ratios2), 3),
            "round_ratios_to_" + second: [round(x, 3) for x in ratios2],
        }
    return out


def operator_rates(rounds: int, reps: int) -> dict[int, dict]:
    """Forward + backward calls per second of each form at each token count."""
    res = {}
    for tokens in (16, 32, 48, 64):
        g = torch.Generator().manual_seed(tokens)
        x = torch.randn(512, tokens, 3, transformer.HEADS, 2, generator=g)
        q, k, v = (t.detach().requires_grad_() for t in x.permute(2, 0, 3, 1, 4))  # the cell's strides
        grad = torch.randn(512, transformer.HEADS, tokens, 2, generator=g)
        rates: dict[str, list[float]] = {name: [] for name in FORMS}
        for _ in range(rounds + 1):  # the first round warms up and is not kept
            for name, fn in FORMS.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn(q, k, v).backward(grad)
                rates[name].append(reps / (time.perf_counter() - t0))
        res[tokens] = summary({n: r[1:] for n, r in rates.items()}, "fused")
        line = "  ".join(f"{n} {1e3 / s['median']:.1f} ms" for n, s in res[tokens].items())
        print(
            f"operator, {tokens} tokens, forward + backward: {line}  (chunked/fused "
            f"{res[tokens]['chunked']['ratio_to_fused']}x, chunked/chunked-autograd "
            f"{res[tokens]['chunked']['ratio_to_chunked-autograd']}x)",
            flush=True,
        )
    return res


def supernet_rates(rounds: int, steps: int, seed: int) -> dict[str, dict]:
    """Full supernet training samples per second with each form in the cells."""
    data = batches(steps, 512, 13, CRITEO_CAPPED, seed)
    model = Supernet(NASREC_FULL, 13, CRITEO_CAPPED, layernorm=True)
    opt = build_optimizer(model, "adagrad", lr=0.12, eps=1e-2, sliced=True)
    archs = path_sampler(NASREC_FULL, "sampled", np.random.default_rng(seed))
    train_steps(model, opt, data[:2], archs(2))
    rates: dict[str, list[float]] = {name: [] for name in FORMS if name != "plain"}
    try:
        for _ in range(rounds):
            paths = archs(steps)
            for name in rates:
                transformer.attention = FORMS[name]  # the transformer operator looks it up at each call
                t0 = time.perf_counter()
                train_steps(model, opt, data, paths)
                rates[name].append(steps * 512 / (time.perf_counter() - t0))
    finally:
        transformer.attention = FORMS["chunked"]
    res = summary(rates, "fused")
    print(
        f"Full supernet, sampled paths, samples/s: fused {res['fused']['median']:,.0f}, chunked-autograd "
        f"{res['chunked-autograd']['median']:,.0f}, chunked {res['chunked']['median']:,.0f}; chunked/fused per "
        f"round {res['chunked']['round_ratios']} (median {res['chunked']['ratio_to_fused']}x); "
        f"chunked/chunked-autograd per round {res['chunked']['round_ratios_to_chunked-autograd']} "
        f"(median {res['chunked']['ratio_to_chunked-autograd']}x)",
        flush=True,
    )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (each form once per round)")
    ap.add_argument("--reps", type=int, default=5, help="operator calls per round")
    ap.add_argument("--steps", type=int, default=10, help="supernet steps per round and form")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(machine_line(), flush=True)
    ops = operator_rates(args.rounds, args.reps)
    net = supernet_rates(args.rounds, args.steps, args.seed)
    print(
        json.dumps(
            {
                "bench": "attention",
                "machine": machine_info(),
                "threads": args.threads,
                "operator": ops,
                "supernet_full": net,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
