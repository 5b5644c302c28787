"""Where an explain call spends its time: seconds per op, forward and relevance, from one
timed call after a warm-up (wall clock around each prepared node op of the plan).

    python bench/profile_ops.py --model vgg16 --batch 16 --composite epsilon_plus_flat
    python bench/profile_ops.py --model vit_b_16 --size 224 --batch 16 --composite "cp_lrp(epsilon=1e-9)"

``--model`` is a model of bench/models.py or a torchvision ViT builder (vit_b_16, ...).
The per-op sums cover everything the plan runs; the rest of the call (target selection,
seeding, copies) is printed as "outside the ops".
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))


class _Timed:
    """A prepared node op whose forward and relevance add their wall time to ``table``."""

    def __init__(self, op, key, table):
        self.op, self.key, self.table = op, key, table

    def forward(self, inputs):
        t = time.perf_counter()
        out = self.op.forward(inputs)
        self.table[self.key + ("fwd",)] += time.perf_counter() - t
        return out

    def relevance(self, ctx, R):
        t = time.perf_counter()
        out = self.op.relevance(ctx, R)
        self.table[self.key + ("bwd",)] += time.perf_counter() - t
        return out


def build(a):
    import fastlrp
    import torch

    if a.model.startswith(("vit_", "swin_", "maxvit")):
        from _zoo import load_torchvision

        tv = load_torchvision()
        torch.manual_seed(0)
        kw = {"image_size": a.size} if a.model.startswith("vit_") else {}
        model = getattr(tv.models, a.model)(weights=None, **kw).eval()
        if a.model.startswith("vit_"):  # torchvision zero-initialises the head: every relevance would be 0
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # (as bench_vit.py)
        x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    else:
        from models import build as build_model

        model, shape = build_model(a.model)
        x = np.random.default_rng(0).standard_normal((a.batch,) + tuple(shape)).astype(np.float32)
    graph = fastlrp.from_torch(model, torch.from_numpy(x[:1]))
    return fastlrp.Explainer(graph, a.composite, backend=a.backend, precision=a.precision), x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--size", type=int, default=224, help="image size of a torchvision ViT")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--composite", default="epsilon_plus_flat")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--precision", default="float32", help="float32, or bf16 (the cpu backend's bfloat16 GEMMs)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args(argv)

    import fastlrp

    fastlrp.set_num_threads(a.threads)
    ex, x = build(a)
    ex.explain(x)  # warm-up: prepares the plan
    plan = ex.plan
    table = collections.defaultdict(float)
    if not hasattr(plan, "ops"):
        sys.exit("profile_ops: this Explainer's plan has no per-node ops to time")
    for n in plan.nodes:
        plan.ops[n.name] = _Timed(plan.ops[n.name], (n.op,), table)
    t = time.perf_counter()
    ex.explain(x)
    total = time.perf_counter() - t
    print(f"{a.model} batch {a.batch} {a.composite} backend {a.backend} {a.precision}, {a.threads} threads: {total:.3f} s "
          f"({a.batch / total:.2f} samples/s)")
    rows = sorted(table.items(), key=lambda kv: -kv[1])
    for (op, phase), s in rows:
        print(f"  {op:14s} {phase}  {s:8.3f} s  {100 * s / total:5.1f}%")
    print(f"  outside the ops      {total - sum(table.values()):8.3f} s")


if __name__ == "__main__":
    main()
