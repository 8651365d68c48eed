"""One training epoch of a local teacher: knot's data path versus the reference's.

Both paths train the same model (same initial weights, seed, optimiser and loss) for
one epoch on the same reviews; only the batches differ:

* ``reference``: the whole split tokenised up front and padded to its longest review
  (truncated to ``--max-length``), batches in a fixed order, as the KNOT reference does;
* ``knot``: :class:`knot.batching.TextDataset` + :func:`knot.batching.make_loader`:
  unpadded cached token ids, batches of similar length, each padded to its own longest
  review, in a seeded shuffled order.

The two epochs run side by side in one process (alternating order over ``--rounds``),
and the script prints samples/s of each and their ratio, and writes a JSON record to
``bench/results/`` (git-ignored).

    KNOT_DATA=../shared/datasets python bench/train_epoch.py            # tiny encoder, 2,000 reviews
    python bench/train_epoch.py --encoder minilm --layers 2 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILE = "amazon_reviews_multi_en/prodAnalysis/toy.json.gz"


def data_root(arg: str | None) -> Path:
    for candidate in (arg, os.environ.get("KNOT_DATA"), REPO.parent / "shared" / "datasets"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    sys.exit("no data root: pass --data-root DIR or set KNOT_DATA (the folder holding amazon_reviews_multi_en/)")


def read_reviews(root: Path, rel: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded sample of ``n`` MARC reviews (text, star) through knot's reader."""
    from knot.data.readers import read_source, validate_source

    spec = validate_source({"reader": "marc", "path": rel})
    records, _ = read_source(spec, lambda p: root / p)
    records = [r for r in records if r.label in ("1", "2", "3", "4", "5")]
    if len(records) < n:
        sys.exit(f"{root / rel}: only {len(records)} labelled reviews, fewer than --n {n}")
    pick = random.Random(seed).sample(range(len(records)), n)
    return [records[i].text for i in pick], [records[i].label for i in pick]


def reference_loader(texts, targets, tokenizer, max_length, batch_size):
    """The reference's data path: the split padded to its longest item, fixed order."""
    from torch.utils.data import DataLoader, TensorDataset

    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    ds = TensorDataset(enc["input_ids"], enc["attention_mask"], targets)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)

    def batches():
        for ids, mask, y in loader:
            yield {"input_ids": ids, "attention_mask": mask, "target": y}

    return batches, int(enc["input_ids"].shape[1])


def knot_loader(texts, targets, tokenizer, max_length, batch_size, seed):
    from knot.batching import TextDataset, make_loader

    ds = TextDataset(texts, tokenizer, max_length, targets)
    loader = make_loader(ds, batch_size, shuffle=True, group_by_length=True, seed=seed)
    return (lambda: iter(loader)), ds


def run_epoch(model, init_state, batches, device, lr, seed, loss_fn) -> dict:
    """One epoch from ``init_state``; returns seconds, samples, padded tokens, mean loss."""
    from knot.training import make_optimizer
    from knot.utils import set_seed

    model.load_state_dict(init_state)
    model.to(device).train()
    set_seed(seed)
    opt = make_optimizer(model, lr, 0.01)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = tokens = real = 0
    loss_sum = 0.0
    sync()
    t0 = time.perf_counter()
    for batch in batches():
        ids = batch["input_ids"].to(device, non_blocking=True)
        mask = batch["attention_mask"].to(device, non_blocking=True)
        y = batch["target"].to(device, non_blocking=True)
        logits = model(ids, mask)
        loss = loss_fn(logits, {"target": y})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        n += ids.shape[0]
        tokens += ids.numel()
        real += int(mask.sum())
        loss_sum += float(loss.detach()) * ids.shape[0]
    sync()
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "samples": n,
        "samples_per_s": n / seconds,
        "padded_tokens": tokens,
        "real_tokens": real,
        "padding_fraction": 1 - real / tokens,
        "mean_loss": loss_sum / n,
    }


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=None, help="folder holding amazon_reviews_multi_en/ (else $KNOT_DATA, ../shared/datasets)")
    ap.add_argument("--file", default=DEFAULT_FILE, help="MARC file relative to the data root")
    ap.add_argument("--n", type=int, default=2000, help="reviews in the epoch")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--encoder", default="tiny", help="tiny, minilm or a local HF folder")
    ap.add_argument("--layers", type=int, default=None, help="keep the first N encoder layers (minilm: 2)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--rounds", type=int, default=1, help="epochs per path (alternating order); medians reported")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/train_epoch-<time>.json)")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from knot.config import ModelConfig, TrainConfig
    from knot.geometry import LabelGeometry
    from knot.models import build_model
    from knot.teachers import teacher_loss
    from knot.utils import resolve_device, set_seed

    device = resolve_device(args.device)
    root = data_root(args.data_root)
    texts, labels = read_reviews(root, args.file, args.n, args.seed)
    geometry = LabelGeometry.preset("sentiment5")
    targets = torch.tensor([geometry.index(s) for s in labels], dtype=torch.long)

    set_seed(args.seed)
    model = build_model(
        ModelConfig(encoder=args.encoder, encoder_layers=args.layers, max_length=args.max_length), geometry
    )
    init_state = copy.deepcopy(model.state_dict())
    loss_fn = teacher_loss(TrainConfig(loss="ce"), geometry)

    t0 = time.perf_counter()
    ref_batches, ref_width = reference_loader(texts, targets, model.tokenizer, args.max_length, args.batch_size)
    ref_tok_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    knot_batches, ds = knot_loader(texts, targets, model.tokenizer, args.max_length, args.batch_size, args.seed)
    knot_tok_s = time.perf_counter() - t0
    lengths = ds.lengths
    print(
        f"{args.n} reviews from {args.file}; tokens per review: mean {lengths.mean():.1f}, "
        f"median {np.median(lengths):.0f}, max {lengths.max()} (truncated at {args.max_length}); "
        f"reference pads every batch to {ref_width}"
    )
    print(f"encoder {args.encoder} (layers {args.layers or 'all'}), batch {args.batch_size}, "
          f"device {device}, torch threads {torch.get_num_threads()}")

    runs: dict[str, list[dict]] = {"reference": [], "knot": []}
    for r in range(args.rounds):
        order = ["reference", "knot"] if r % 2 == 0 else ["knot", "reference"]
        for name in order:
            batches = ref_batches if name == "reference" else knot_batches
            res = run_epoch(model, init_state, batches, device, args.lr, args.seed, loss_fn)
            runs[name].append(res)
            print(
                f"  round {r + 1} {name:9s}: {res['seconds']:7.1f} s, {res['samples_per_s']:7.1f} samples/s, "
                f"padding {100 * res['padding_fraction']:4.1f} %, loss {res['mean_loss']:.4f}"
            )
    sps = {k: statistics.median(x["samples_per_s"] for x in v) for k, v in runs.items()}
    ratio = sps["knot"] / sps["reference"]
    print(f"reference: {sps['reference']:.1f} samples/s")
    print(f"knot:      {sps['knot']:.1f} samples/s")
    print(f"ratio:     {ratio:.2f}x (target >= 3x)")

    out = Path(args.out) if args.out else REPO / "bench" / "results" / (
        f"train_epoch-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "train_epoch",
        "args": vars(args),
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "lengths": {"mean": float(lengths.mean()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "reference_width": ref_width,
        "tokenise_seconds": {"reference": ref_tok_s, "knot": knot_tok_s},
        "runs": runs,
        "samples_per_s": sps,
        "ratio": ratio,
    }
    from knot.utils import atomic_write_json

    atomic_write_json(out, record)
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
