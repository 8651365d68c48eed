"""Benchmark: knot's OT distillation loss against the KNOT reference formulation.

For B in {64, 1024}, K in {5, 28} and T = 4 teachers it measures, side by side in one run,
the median forward+backward time of

* knot: ``knot.losses.distillation_loss("ot", ...)`` with ``method="auto"`` (exact 1-D closed
  form, exact dual-vertex solver, or exact per-pair LP, depending on the geometry), and
* the reference: geomloss ``SamplesLoss("sinkhorn", p=1, blur=0.001, debias=False,
  backend="tensorized")`` called once per teacher with the label coordinates as point clouds
  and the probabilities as weights, summed with the teacher weights,

their ratio, each one's largest absolute error on the per-pair OT costs against POT's exact
LP (``ot.emd2`` in float64), the reference's relative error on the loss and on the gradient
(against the exact ones), and the operator calls per forward+backward. Knot's Sinkhorn is
reported at B = 64 (time, error, updates, convergence). Optionally (``--step``, on by
default) it measures the loss's share of a whole distillation step of a BERT-tiny-sized
``transformers.BertModel`` (random init, batch 64, length 128).

Synthetic data: student logits ~ N(0, 1); teachers are peaked soft labels
softmax(3 z + 3 e_y) with a random class y per teacher and example.

The newer losses of issue 21 (``ot_kl``, ``sord``, ``uld``, the sharpened ``kl`` mixture,
``ot`` under a learned non-metric cost, and the Sinkhorn-smoothed ``ot`` with ``rel_eps``
0.1 as the study ran it) are timed against the exact ``ot`` loss on the same geometry at
B = 1024, K = 5 and K = 28, interleaved, and their ratios printed side by side (target: at
most 2x; ``--only-new`` runs just this part).

Run::

    python bench/ot_loss.py                 # ~1-2 minutes on 2 cores
    python bench/ot_loss.py --no-step --repeats 3
    python bench/ot_loss.py --only-new --repeats 3

It prints a table and writes JSON to bench/results/ (git-ignored); the path is printed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

from knot.geometry import LabelGeometry, head_cost  # noqa: E402
from knot.losses import distillation_loss  # noqa: E402
from knot.ot import SinkhornConvergenceWarning, ot_cost, resolve_method, sinkhorn_cost  # noqa: E402
from knot.utils import atomic_write_json  # noqa: E402

log = logging.getLogger("bench.ot_loss")

T = 4
BATCHES = (64, 1024)


def geometries() -> dict[int, list[tuple[str, LabelGeometry]]]:
    gen = torch.Generator().manual_seed(0)
    random28 = LabelGeometry([f"e{i}" for i in range(28)], torch.randn(28, 2, generator=gen, dtype=torch.float64),
                             name="random28-2d")
    return {
        5: [(n, LabelGeometry.preset(n)) for n in ("sentiment5", "sentiment5-knot6d", "emotion5")],
        28: [("random28-2d", random28)],
    }


def make_data(b: int, k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=gen)
    y = torch.randint(0, k, (b, T), generator=gen)
    teachers = torch.softmax(3 * torch.randn(b, T, k, generator=gen) + 3 * torch.nn.functional.one_hot(y, k), -1)
    weights = torch.rand(T, generator=gen) + 0.5
    return logits, teachers, weights / weights.sum()


def reference_loss_fn(geometry: LabelGeometry, b: int):
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=1, blur=0.001, debias=False, backend="tensorized")
    x = geometry.coords.float().expand(b, -1, -1).contiguous()  # (B, K, D) label coordinates

    def per_pair(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # (B, K), (B, T, K) -> (B, T)
        return torch.stack([loss(s, x, t[:, j], x) for j in range(t.shape[1])], dim=1)

    def fn(logits, teachers, weights):
        s = torch.softmax(logits, -1)
        return sum(weights[j] * loss(s, x, teachers[:, j], x).mean() for j in range(teachers.shape[1]))

    return fn, per_pair


def knot_loss_fn(geometry: LabelGeometry, **kw):
    def fn(logits, teachers, weights):
        return distillation_loss("ot", logits, teachers, weights, geometry, **kw)

    return fn


def _one(fn, logits, teachers, weights):
    z = logits.clone().requires_grad_()
    t0 = time.perf_counter()
    loss = fn(z, teachers, weights)
    loss.backward()
    return time.perf_counter() - t0, loss.detach(), z.grad.detach()


def time_side_by_side(fa, fb, logits, teachers, weights, repeats: int, min_seconds: float = 0.3, cap: int = 2000):
    """Interleaved timing of two losses on the same inputs, so both see the same machine load.

    ``repeats`` rounds: ``fb`` once, then ``fa`` (the fast one) for as long as ``fb`` took;
    then more ``fa`` until it has run ``min_seconds`` in all (at most ``cap`` times).
    Returns ``(ms a, loss a, grad a, ms b, loss b, grad b, samples a, samples b)``, medians.
    """
    _one(fa, logits, teachers, weights)
    _one(fb, logits, teachers, weights)
    ta, tb = [], []
    for _ in range(repeats):
        dt_b, lb, gb = _one(fb, logits, teachers, weights)
        tb.append(dt_b)
        spent = 0.0
        while spent < dt_b and len(ta) < cap:
            dt_a, la, ga = _one(fa, logits, teachers, weights)
            ta.append(dt_a)
            spent += dt_a
    while sum(ta) < min_seconds and len(ta) < cap:
        dt_a, la, ga = _one(fa, logits, teachers, weights)
        ta.append(dt_a)
    return 1e3 * statistics.median(ta), la, ga, 1e3 * statistics.median(tb), lb, gb, len(ta), len(tb)


def count_ops(fn, logits, teachers, weights) -> int | None:
    """aten operator calls in one forward+backward (dispatcher level)."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:  # pragma: no cover
        return None

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.n += 1
            return func(*args, **(kwargs or {}))

    z = logits.clone().requires_grad_()
    with Counter():
        fn(z, teachers, weights).backward()
    return Counter.n


def exact_pairs(s: np.ndarray, t: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """POT's exact LP per pair, float64: (B, K), (B, T, K) -> (B, T)."""
    import ot as pot

    s = s / s.sum(-1, keepdims=True)
    t = t / t.sum(-1, keepdims=True)
    return np.array([[pot.emd2(s[b], t[b, j], cost) for j in range(t.shape[1])] for b in range(len(s))])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench_losses(repeats: int) -> tuple[list[dict], list[dict]]:
    rows, sinkhorn_rows = [], []
    for k, geoms in geometries().items():
        for b in BATCHES:
            for name, g in geoms:
                logits, teachers, w = make_data(b, k, seed=1000 * k + b)
                ref_fn, ref_pairs = reference_loss_fn(g, b)
                knot_fn = knot_loss_fn(g)
                # side by side, interleaved on the same inputs
                t_knot, l_knot, g_knot, t_ref, l_ref, g_ref, n_knot, n_ref = time_side_by_side(
                    knot_fn, ref_fn, logits, teachers, w, repeats
                )
                # accuracy against the exact LP on the same inputs
                s = torch.softmax(logits, -1)
                exact = exact_pairs(s.double().numpy(), teachers.double().numpy(), g.cost.numpy())
                with torch.no_grad():
                    knot_pairs = ot_cost(s[:, None, :], teachers, g).double().numpy()
                    ref_pair_vals = ref_pairs(s, teachers).double().numpy()
                exact_loss = float((exact * w.double().numpy()).sum(1).mean())
                row = {
                    "B": b,
                    "K": k,
                    "T": T,
                    "geometry": name,
                    "knot_method": resolve_method(g),
                    "knot_ms": t_knot,
                    "reference_ms": t_ref,
                    "knot_samples": n_knot,
                    "reference_samples": n_ref,
                    "speedup": t_ref / t_knot,
                    "knot_max_abs_err": float(np.abs(knot_pairs - exact).max()),
                    "reference_max_abs_err": float(np.abs(ref_pair_vals - exact).max()),
                    "knot_loss": float(l_knot),
                    "reference_loss": float(l_ref),
                    "exact_loss": exact_loss,
                    "reference_loss_rel_err": (float(l_ref) - exact_loss) / exact_loss,
                    "reference_grad_rel_err": rel(g_ref, g_knot),
                }
                if b == BATCHES[0]:
                    row["knot_ops"] = count_ops(knot_fn, logits, teachers, w)
                    row["reference_ops"] = count_ops(ref_fn, logits, teachers, w)
                rows.append(row)
                log.info("B=%d K=%d %s: knot %.3f ms, reference %.2f ms", b, k, name, t_knot, t_ref)
                if b == BATCHES[0] and name in ("emotion5", "random28-2d"):
                    sinkhorn_rows.append(bench_sinkhorn(g, name, logits, teachers, w, exact, exact_loss))
    return rows, sinkhorn_rows


def bench_sinkhorn(g, name, logits, teachers, w, exact, exact_loss) -> dict:
    """knot's own Sinkhorn (default eps = 1e-2 x largest cost, default budget), one timed call."""
    z = logits.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
        t0 = time.perf_counter()
        vals, res = sinkhorn_cost(torch.softmax(z, -1)[:, None, :], teachers, g, return_result=True)  # (B, T)
        loss = (w * vals).sum(1).mean()  # = distillation_loss("ot", ..., method="sinkhorn")
        loss.backward()
        t_ms = 1e3 * (time.perf_counter() - t0)
    err = np.abs(vals.detach().double().numpy() - exact)
    return {
        "B": logits.shape[0],
        "K": logits.shape[1],
        "geometry": name,
        "eps": res.eps,
        "ms": t_ms,
        "n_iter": res.n_iter,
        "converged": res.converged,
        "marginal_error": res.marginal_error,
        "max_abs_err": float(err.max()),
        "max_rel_err": float((err / np.maximum(exact, 1e-12)).max()),
        "loss_rel_err": (float(loss.detach()) - exact_loss) / exact_loss,
    }


def bench_step(loss_rows: list[dict], steps: int) -> list[dict]:
    """Share of the OT loss's forward+backward in a BERT-tiny distillation step (B=64, L=128)."""
    from transformers import BertConfig, BertModel

    b, length = 64, 128
    out = []
    cfg = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=512, max_position_embeddings=512)
    for k, geoms in geometries().items():
        name, g = geoms[-1]  # emotion5 (exact dual vertices) / random28-2d (LP)
        torch.manual_seed(0)
        encoder = BertModel(cfg)
        head = torch.nn.Linear(cfg.hidden_size, k)
        params = list(encoder.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        gen = torch.Generator().manual_seed(k)
        ids = torch.randint(0, cfg.vocab_size, (b, length), generator=gen)
        mask = torch.ones(b, length, dtype=torch.long)
        _, teachers, w = make_data(b, k, seed=7)
        ref_fn, _ = reference_loss_fn(g, b)
        for label, fn in (("knot", knot_loss_fn(g)), ("reference", ref_fn)):
            times = []
            for i in range(steps + 1):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                logits = head(encoder(input_ids=ids, attention_mask=mask).pooler_output)
                fn(logits, teachers, w).backward()
                opt.step()
                if i:
                    times.append(time.perf_counter() - t0)
            step_ms = 1e3 * statistics.median(times)
            loss_ms = next(r for r in loss_rows if r["B"] == b and r["K"] == k and r["geometry"] == name)[
                f"{label}_ms"
            ]
            out.append({"K": k, "geometry": name, "loss": label, "step_ms": step_ms, "loss_ms": loss_ms,
                        "loss_share": loss_ms / step_ms})
            log.info("step K=%d %s: %.0f ms, loss %.2f ms", k, label, step_ms, loss_ms)
    return out


#: (label, loss, aggregate, options) of the newer losses timed against the exact ``ot`` loss.
NEW_LOSSES = (
    ("ot_kl", "ot_kl", "per_teacher", {"lam": 0.5}),
    ("sord", "sord", "mixture", {"tau": 1.0}),
    ("uld", "uld", "per_teacher", {}),
    ("kl+sharpen", "kl", "mixture", {"sharpen": 0.5}),
    ("ot learned", "ot", "per_teacher", {}),  # under a learned head cost (non-metric: exact LP)
    ("ot sinkhorn", "ot", "per_teacher", {"method": "sinkhorn", "rel_eps": 0.1}),
)
NEW_B = 1024
NEW_TARGET = 2.0


def time_interleaved(fns: dict, logits, teachers, weights, repeats: int, min_seconds: float = 0.05) -> dict:
    """Median forward+backward ms of each loss, measured in interleaved rounds (same load for all)."""
    for fn in fns.values():
        _one(fn, logits, teachers, weights)
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            spent, n = 0.0, 0
            while spent < min_seconds or n == 0:
                spent += _one(fn, logits, teachers, weights)[0]
                n += 1
            times[name].append(spent / n)
    return {name: 1e3 * statistics.median(v) for name, v in times.items()}


def bench_new_losses(repeats: int) -> list[dict]:
    """Ratio of each newer loss's step time to the exact ``ot`` loss's, B = 1024, K = 5 and 28."""
    rows = []
    for k, geoms in geometries().items():
        gen = torch.Generator().manual_seed(k)
        learned = LabelGeometry.from_cost([f"c{i}" for i in range(k)], head_cost(torch.randn(k, 16, generator=gen)),
                                          name="learned:head")
        logits, teachers, w = make_data(NEW_B, k, seed=2000 + k)
        for name, g in geoms:
            fns = {"ot": knot_loss_fn(g)}
            for label, loss, aggregate, options in NEW_LOSSES:
                geometry = learned if label == "ot learned" else g

                def fn(z, t, wt, loss=loss, aggregate=aggregate, options=options, geometry=geometry):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", SinkhornConvergenceWarning)
                        return distillation_loss(loss, z, t, wt, geometry, aggregate=aggregate, **options)

                fns[label] = fn
            ms = time_interleaved(fns, logits, teachers, w, repeats)
            rows.append({"B": NEW_B, "K": k, "geometry": name, "ot_method": resolve_method(g),
                         "learned_method": resolve_method(learned), "ms": ms,
                         "ratio": {label: ms[label] / ms["ot"] for label in ms if label != "ot"}})
            log.info("new losses B=%d K=%d %s: %s", NEW_B, k, name,
                     ", ".join(f"{a} {v:.2f}x" for a, v in rows[-1]["ratio"].items()))
    return rows


def fmt_new_table(rows) -> str:
    labels = [label for label, *_ in NEW_LOSSES]
    lines = [f"newer losses: step time (fwd+bwd) / exact ot on the same geometry, B={NEW_B}, T={T} "
             f"(target <= {NEW_TARGET:g}x; 'ot learned' uses a learned non-metric cost, 'ot sinkhorn' rel_eps 0.1):",
             f"{'K':>3} {'geometry':<18} {'ot ms':>8} " + " ".join(f"{label:>12}" for label in labels)]
    for r in rows:
        lines.append(f"{r['K']:>3} {r['geometry']:<18} {r['ms']['ot']:>8.3f} "
                     + " ".join(f"{r['ratio'][label]:>11.2f}x" for label in labels))
    for label in labels:
        worst = max(r["ratio"][label] for r in rows)
        lines.append(f"  {label:<12} worst {worst:.2f}x ({'met' if worst <= NEW_TARGET else 'NOT met'})")
    return "\n".join(lines)


def fmt_table(rows, sinkhorn_rows, step_rows) -> str:
    lines = [
        f"{'B':>5} {'K':>3} {'geometry':<18} {'knot method':<11} {'knot ms':>9} {'ref ms':>9} {'speedup':>8} "
        f"{'knot max|err|':>13} {'ref max|err|':>12} {'ref loss err':>12} {'ref grad err':>12} {'ops knot/ref':>13}",
    ]
    for r in rows:
        ops = f"{r['knot_ops']}/{r['reference_ops']}" if "knot_ops" in r else ""
        lines.append(
            f"{r['B']:>5} {r['K']:>3} {r['geometry']:<18} {r['knot_method']:<11} {r['knot_ms']:>9.3f} "
            f"{r['reference_ms']:>9.2f} {r['speedup']:>7.1f}x {r['knot_max_abs_err']:>13.1e} "
            f"{r['reference_max_abs_err']:>12.1e} {100 * r['reference_loss_rel_err']:>+11.1f}% "
            f"{100 * r['reference_grad_rel_err']:>11.1f}% {ops:>13}"
        )
    lines.append("")
    lines.append("knot Sinkhorn (method='sinkhorn', default eps = 1e-2 x largest cost, default budget):")
    for s in sinkhorn_rows:
        lines.append(
            f"  B={s['B']} K={s['K']} {s['geometry']}: {s['ms']:.1f} ms fwd+bwd, {s['n_iter']} updates, "
            f"converged={s['converged']} (marginal error {s['marginal_error']:.1e}), max|err| {s['max_abs_err']:.1e}, "
            f"max rel err {100 * s['max_rel_err']:.2f}%, loss rel err {100 * s['loss_rel_err']:+.2f}%"
        )
    lines.append("")
    lines.append("targets (issue 2):")
    for r in rows:
        if r["K"] == 5 and r["B"] == 1024:
            lines.append(f"  B=1024 K=5 {r['geometry']:<18} speedup {r['speedup']:.1f}x (target >= 50x: "
                         f"{'met' if r['speedup'] >= 50 else 'NOT met'})")
    worst5 = max(r["knot_max_abs_err"] for r in rows if r["K"] == 5)
    lines.append(f"  K=5 exact error {worst5:.1e} (target <= 1e-4: {'met' if worst5 <= 1e-4 else 'NOT met'})")
    for r in rows:
        if r["K"] == 28:
            lines.append(f"  B={r['B']} K=28 speedup {r['speedup']:.2f}x (target: about par, exact)")
    if step_rows:
        lines.append("")
        lines.append("share of the OT loss (fwd+bwd) in a BERT-tiny distillation step (B=64, L=128; "
                     "target <= 0.5%):")
        for s in step_rows:
            lines.append(
                f"  K={s['K']} {s['geometry']:<12} {s['loss']:<9}: step {s['step_ms']:.0f} ms, "
                f"loss {s['loss_ms']:.2f} ms = {100 * s['loss_share']:.2f}% of the step"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--step", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the share in a BERT-tiny step")
    ap.add_argument("--step-iters", type=int, default=3, help="timed steps per loss")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/ot_loss-<time>.json)")
    ap.add_argument("--only-new", action="store_true", help="only the newer losses against the exact ot loss")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows, sinkhorn_rows, step_rows = [], [], []
    if not args.only_new:
        rows, sinkhorn_rows = bench_losses(args.repeats)
        step_rows = bench_step(rows, args.step_iters) if args.step else []
    new_rows = bench_new_losses(args.repeats)
    table = (fmt_table(rows, sinkhorn_rows, step_rows) + "\n\n" if rows else "") + fmt_new_table(new_rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average {load:.1f}")
    if load > (os.cpu_count() or 1):
        print("warning: the machine is busier than its CPU count; timings are unreliable "
              "(with --threads 2, OpenMP waits for descheduled threads; try --threads 1)")
    print(table)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "bench" / "results" / f"ot_loss-{stamp}.json"
    import geomloss
    import ot as pot

    atomic_write_json(out, {
        "benchmark": "ot_loss",
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "settings": {"repeats": args.repeats, "threads": args.threads, "T": T, "batches": list(BATCHES),
                     "step": args.step, "step_iters": args.step_iters},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "pot": pot.__version__,
                        "geomloss": getattr(geomloss, "__version__", "?"), "cpu_count": os.cpu_count(),
                        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                        "platform": platform.platform()},
        "losses": rows,
        "sinkhorn": sinkhorn_rows,
        "step": step_rows,
        "new_losses": new_rows,
        "wall_s": time.perf_counter() - started,
    })
    print(f"\nwall time {time.perf_counter() - started:.0f} s; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
