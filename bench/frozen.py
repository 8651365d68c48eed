"""One teacher epoch: fine-tuning the encoder versus training a head on cached features.

Three ways to train a local teacher for one epoch on the same MARC reviews, with the
same loss (cross-entropy), optimiser (AdamW), batch size and length-grouped batches:

* ``finetune``: :class:`knot.models.KnotClassifier` with MiniLM truncated to
  ``--finetune-layers`` (2) layers, encoder and head trained, as the teachers train
  today (:func:`bench.train_epoch.run_epoch`);
* ``frozen_pooled``: :class:`knot.heads.PooledHead` on cached mean-pooled sentence
  embeddings of the full encoder (``--encode-layers``, default all 6);
* ``frozen_tokens``: :class:`knot.heads.TokenHead` (KNOT's head) on cached token states
  of the full encoder.

The features are encoded once, first, into a :class:`knot.features.FeatureCache`
(a temporary folder unless ``--cache``); that one-time cost is timed separately and
reported as texts/s, with the cache's size on disk. The epochs then run side by side in
one process (order alternating over ``--rounds``; each frozen epoch repeated
``--repeats`` times per round, medians reported), and the script prints samples/s and
the ratios to fine-tuning, and writes ``bench/results/frozen.json`` (git-ignored).

    KNOT_DATA=../shared/datasets python bench/frozen.py                 # 2,000 reviews, minilm
    python bench/frozen.py --n 200 --encoder tiny                       # a smoke test
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_epoch import DEFAULT_FILE, REPO, data_root, git_commit, read_reviews, run_epoch  # noqa: E402


def head_epoch(head, init_state, loader, device, lr, seed, loss_fn) -> dict:
    """One epoch of a head over cached features from ``init_state``."""
    from knot.training import make_optimizer
    from knot.utils import set_seed

    head.load_state_dict(init_state)
    head.to(device).train()
    set_seed(seed)
    opt = make_optimizer(head, lr, 0.01)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = 0
    loss_sum = 0.0
    sync()
    t0 = time.perf_counter()
    for batch in loader:
        x = batch["features"].to(device, non_blocking=True)
        mask = batch.get("feature_mask")
        mask = mask.to(device, non_blocking=True) if mask is not None else None
        y = batch["target"].to(device, non_blocking=True)
        logits = head(x, mask)
        loss = loss_fn(logits, {"target": y})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        n += x.shape[0]
        loss_sum += float(loss.detach()) * x.shape[0]
    sync()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples": n, "samples_per_s": n / seconds, "mean_loss": loss_sum / n}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=None, help="folder holding amazon_reviews_multi_en/ (else $KNOT_DATA, ../shared/datasets)")
    ap.add_argument("--file", default=DEFAULT_FILE, help="MARC file relative to the data root")
    ap.add_argument("--n", type=int, default=2000, help="reviews in the epoch")
    ap.add_argument("--max-length", type=int, default=200, help="truncation length (the config default)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--encode-batch-size", type=int, default=64)
    ap.add_argument("--encoder", default="minilm", help="minilm, tiny or a local HF folder")
    ap.add_argument("--finetune-layers", type=int, default=2, help="encoder layers kept when fine-tuning")
    ap.add_argument("--encode-layers", type=int, default=None, help="encoder layers for the cached features (default all)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--rounds", type=int, default=1, help="fine-tune epochs (alternating order); medians reported")
    ap.add_argument("--repeats", type=int, default=5, help="frozen epochs per round")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: a temporary one, deleted after)")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/frozen.json)")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from knot.batching import TextDataset, make_loader
    from knot.config import ModelConfig, TrainConfig
    from knot.features import FeatureCache, FeatureDataset
    from knot.geometry import LabelGeometry
    from knot.heads import PooledHead, TokenHead
    from knot.models import build_encoder, build_model
    from knot.teachers import teacher_loss
    from knot.utils import atomic_write_json, resolve_device, set_seed

    device = resolve_device(args.device)
    root = data_root(args.data_root)
    texts, labels = read_reviews(root, args.file, args.n, args.seed)
    geometry = LabelGeometry.preset("sentiment5")
    targets = torch.tensor([geometry.index(s) for s in labels], dtype=torch.long)
    loss_fn = teacher_loss(TrainConfig(loss="ce"), geometry)
    print(f"{args.n} reviews from {args.file}; max_length {args.max_length}, batch {args.batch_size}, "
          f"device {device}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")

    # -- one-time encoding ---------------------------------------------------------
    tmp = None
    if args.cache:
        cache_dir = Path(args.cache)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="knot-frozen-")
        cache_dir = Path(tmp.name)
    cache = FeatureCache(cache_dir)
    encoder, tokenizer, _ = build_encoder(args.encoder, args.encode_layers)
    layers = int(encoder.config.num_hidden_layers)
    encoding: dict[str, dict] = {}
    entries = {}
    for kind in ("tokens", "mean"):
        t0 = time.perf_counter()
        entry = cache.get_or_build(
            encoder, tokenizer, texts, source=args.encoder, layers=args.encode_layers, max_length=args.max_length,
            kind=kind, batch_size=args.encode_batch_size, device=device,
        )
        seconds = time.perf_counter() - t0
        size = dir_bytes(entry.path)
        entries[kind] = entry
        encoding[kind] = {
            "seconds": seconds,
            "texts_per_s": args.n / seconds,
            "bytes": size,
            "bytes_per_1000_texts": size * 1000 / args.n,
        }
        print(f"encode {kind:6s} ({layers} layers): {seconds:6.1f} s, {args.n / seconds:6.1f} texts/s, "
              f"{size / 2**20:7.1f} MiB on disk ({size * 1000 / args.n / 2**20:.1f} MiB per 1,000 texts)")
    lengths = entries["tokens"].lengths
    print(f"tokens per review: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, max {lengths.max()}")
    t0 = time.perf_counter()
    cache.get_or_build(encoder, tokenizer, texts, source=args.encoder, layers=args.encode_layers,
                       max_length=args.max_length, kind="tokens")
    hit_seconds = time.perf_counter() - t0
    print(f"cache hit (tokens, verified): {hit_seconds:.2f} s")
    hidden = entries["mean"].hidden
    del encoder

    # -- the three epochs ------------------------------------------------------------
    set_seed(args.seed)
    model = build_model(
        ModelConfig(encoder=args.encoder, encoder_layers=args.finetune_layers, max_length=args.max_length), geometry
    )
    model_init = copy.deepcopy(model.state_dict())
    ds = TextDataset(texts, model.tokenizer, args.max_length, targets)
    ft_loader = make_loader(ds, args.batch_size, shuffle=True, group_by_length=True, seed=args.seed)

    set_seed(args.seed)
    pooled = PooledHead(hidden, geometry.num_labels)
    pooled_init = copy.deepcopy(pooled.state_dict())
    pooled_loader = make_loader(FeatureDataset(entries["mean"], targets), args.batch_size, shuffle=True, seed=args.seed)
    set_seed(args.seed)
    token_head = TokenHead(hidden, geometry.num_labels, heads=2)
    token_init = copy.deepcopy(token_head.state_dict())
    token_loader = make_loader(FeatureDataset(entries["tokens"], targets), args.batch_size, shuffle=True, seed=args.seed)

    def run(name: str) -> dict:
        if name == "finetune":
            return run_epoch(model, model_init, lambda: iter(ft_loader), device, args.lr, args.seed, loss_fn)
        if name == "frozen_pooled":
            return head_epoch(pooled, pooled_init, pooled_loader, device, args.head_lr, args.seed, loss_fn)
        return head_epoch(token_head, token_init, token_loader, device, args.head_lr, args.seed, loss_fn)

    names = ["finetune", "frozen_pooled", "frozen_tokens"]
    runs: dict[str, list[dict]] = {k: [] for k in names}
    loads = []
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            for _ in range(1 if name == "finetune" else args.repeats):
                res = run(name)
                runs[name].append(res)
            loads.append(os.getloadavg()[0])
            print(f"  round {r + 1} {name:13s}: {res['seconds']:8.3f} s, {res['samples_per_s']:9.1f} samples/s, "
                  f"loss {res['mean_loss']:.4f}, load {loads[-1]:.2f}")
    sps = {k: statistics.median(x["samples_per_s"] for x in v) for k, v in runs.items()}
    ratios = {k: sps[k] / sps["finetune"] for k in ("frozen_pooled", "frozen_tokens")}
    print(f"finetune ({args.finetune_layers} layers): {sps['finetune']:9.1f} samples/s")
    print(f"frozen pooled head:       {sps['frozen_pooled']:9.1f} samples/s  ratio {ratios['frozen_pooled']:7.1f}x (target >= 100x)")
    print(f"frozen KNOT head:         {sps['frozen_tokens']:9.1f} samples/s  ratio {ratios['frozen_tokens']:7.1f}x (target >= 5x)")
    print(f"encoding, once ({layers} layers): tokens {encoding['tokens']['texts_per_s']:.1f} texts/s, "
          f"mean {encoding['mean']['texts_per_s']:.1f} texts/s; load average {os.getloadavg()}")

    out = Path(args.out) if args.out else REPO / "bench" / "results" / "frozen.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "frozen",
        "args": vars(args),
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_average_during_epochs": loads,
        "load_average_end": list(os.getloadavg()),
        "encode_layers": layers,
        "lengths": {"mean": float(lengths.mean()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "encoding": encoding,
        "cache_hit_seconds": hit_seconds,
        "runs": runs,
        "samples_per_s": sps,
        "ratios": ratios,
    }
    atomic_write_json(out, record)
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
