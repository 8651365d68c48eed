"""Torch vs onnxruntime fp32 vs onnxruntime int8 on one checkpoint of a run, side by side.

Usage::

    python bench/export.py RUN/students/ot [--out DIR] [--repeats 20]

Exports the checkpoint with ``knot export --int8`` (into a temporary folder unless
``--out``), then measures, on the run's test texts:

- latency at batch 1 (median over ``--repeats`` single texts, ms),
- throughput at batch 32 (texts per second over the union test set),

for knot's torch ``predict_proba``, onnxruntime fp32 and onnxruntime int8, with the ratios
to torch; and the int8 model's agreement with fp32 (argmax agreement, accuracy, macro-F1
and Semantic Distance deltas on every test set of the run). The load average is printed
before and after: on a shared machine the timings move with it. Both runtimes run with the
same number of threads (``--threads``, default torch's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from knot.export import OnnxPredictor, export_checkpoint, find_run, run_test_sets
from knot.models import load


def _latency_ms(fn, texts: list[str]) -> float:
    times = []
    for t in texts:
        t0 = time.perf_counter()
        fn([t])
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _throughput(fn, texts: list[str]) -> float:
    t0 = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="keep the export here (default: a temporary folder)")
    ap.add_argument("--repeats", type=int, default=20, help="single texts timed for the batch-1 latency")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = find_run(args.checkpoint)
    if run is None:
        raise SystemExit(f"{args.checkpoint}: not inside a run folder (results.json + config.yaml above it)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "export"
        t0 = time.perf_counter()
        res = export_checkpoint(args.checkpoint, out, force=args.out is not None, quantize="int8")
        print(f"export (with int8 and its measurement): {time.perf_counter() - t0:.1f} s; "
              f"fp32 parity on probe texts: max abs {res['parity_max_abs']:.1e}")
        model = load(args.checkpoint)
        fp32, int8 = OnnxPredictor(out, threads=args.threads), OnnxPredictor(out, int8=True, threads=args.threads)
        sets = run_test_sets(run, fp32.labels)
        union = [t for texts, _ in sets.values() for t in texts]
        union = list(dict.fromkeys(union))  # the union set repeats the local ones
        single = union[: args.repeats]
        runners = {
            "torch": lambda x: model.predict_proba(x, batch_size=32),
            "onnxruntime fp32": lambda x: fp32.predict_proba(x, batch_size=32),
            "onnxruntime int8": lambda x: int8.predict_proba(x, batch_size=32),
        }
        for fn in runners.values():  # warm up (a frozen model builds its encoder here)
            fn(single[:2])
        rows = {name: (_latency_ms(fn, single), _throughput(fn, union)) for name, fn in runners.items()}
        base_lat, base_tp = rows["torch"]
        print(f"\n{len(single)} texts at batch 1, {len(union)} texts at batch 32:\n")
        print("| runtime | latency batch 1 (ms) | vs torch | throughput batch 32 (texts/s) | vs torch |")
        print("|---|---|---|---|---|")
        for name, (lat, tp) in rows.items():
            print(f"| {name} | {lat:.1f} | {base_lat / lat:.2f}x | {tp:.0f} | {tp / base_tp:.2f}x |")
        gap = max(float(np.abs(fp32.predict_proba(t) - model.predict_proba(t)).max()) for t, _ in sets.values())
        print(f"\nonnxruntime fp32 vs torch on every test set: max abs {gap:.1e}")
        print("\nint8 vs fp32 (int8 minus fp32):\n")
        print("| test set | argmax agreement | Δ accuracy | Δ macro-F1 | Δ SD |")
        print("|---|---|---|---|---|")
        for name, d in res["int8"].items():
            print(f"| {name} | {d['agreement']:.4f} | {d['accuracy']:+.4f} | {d['macro_f1']:+.4f} | "
                  f"{d['semantic_distance']:+.4f} |")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
