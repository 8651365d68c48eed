"""Local teachers and the global model: :func:`train_teacher`.

Each local-role domain of the config gets its own teacher, trained on that domain's
prepared ``train`` split and selected on its ``val`` split; the global model is trained
on the global-role domain(s) (their splits concatenated). All of them are the same
:class:`~knot.models.KnotClassifier`, trained by :func:`knot.training.fit` with the
cross-entropy loss (``ce``) or the reference's local OT variant (``ot+ce``) over the
task geometry, and selected by validation macro-F1.

Outputs (``RunLayout``)::

    RUN/teachers/<domain>/   best/ (checkpoint), last/ (resume state), metrics.jsonl
    RUN/global/              the same for the global model
    RUN/cache/tokens/        tokenised splits (reused by later stages)
    RUN/features/            frozen mode: cached encoder features ($KNOT_CACHE wins)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

from knot.batching import make_loader
from knot.data import load_split, prepare_data
from knot.losses import TEACHER_LOSSES, ot_ce_loss
from knot.models import build_model, make_dataset
from knot.training import fit
from knot.run import RunContext
from knot.utils import set_seed

__all__ = ["train_teacher", "teacher_loss", "labelled_split"]

log = logging.getLogger(__name__)


def teacher_loss(train_cfg, geometry) -> Callable[[torch.Tensor, dict], torch.Tensor]:
    """``loss_fn(logits, batch)`` for hard labels (``batch["target"]``, LongTensor (B,)).

    Both losses are :func:`knot.losses.ot_ce_loss` over the task geometry: ``ce`` is its
    cross-entropy term alone (``ot_weight`` 0); ``ot+ce`` is the reference's local OT
    variant, ``ot_weight`` times the OT cost to the label smoothed by
    ``label_smoothing``, plus the cross-entropy.
    """
    if train_cfg.loss not in TEACHER_LOSSES:
        raise ValueError(f"loss: expected {' or '.join(TEACHER_LOSSES)}, got {train_cfg.loss!r}")
    smoothing = train_cfg.label_smoothing
    weight = TEACHER_LOSSES[train_cfg.loss](train_cfg)

    def loss_fn(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return ot_ce_loss(logits, batch["target"], geometry, smoothing=smoothing, ot_weight=weight)

    return loss_fn


def labelled_split(layout, domain: str, split: str, geometry) -> tuple[list[str], torch.Tensor]:
    """Texts and class indices (LongTensor (N,)) of one prepared split.

    Raises ``ValueError`` naming the domain and split for unlabelled rows or labels
    outside the task's label space.
    """
    examples = load_split(layout.data, domain, split)
    texts, targets = [], []
    for i, ex in enumerate(examples):
        if ex.label is None:
            raise ValueError(f"{domain}/{split}: example {i + 1} has no label; teachers need labels")
        try:
            targets.append(geometry.index(ex.label))
        except ValueError as exc:
            raise ValueError(f"{domain}/{split}: example {i + 1}: {exc}") from None
        texts.append(ex.text)
    if not texts:
        raise ValueError(f"{domain}/{split}: the split is empty")
    return texts, torch.tensor(targets, dtype=torch.long)


def _ensure_data(run: RunContext) -> None:
    """Prepare the data when it is missing."""
    if Path(run.layout.manifest).is_file():
        return
    log.info("preparing data into %s", run.layout.data)
    prepare_data(run.cfg, run.layout, run.data_root)  # resolves the data root only if a source needs it


def _train_one(
    run: RunContext,
    *,
    name: str,
    role: str,
    domains: list[str],
    train_cfg: Any,
    out_dir: Path,
    resume: bool,
) -> dict:
    cfg, layout, geometry, device = run.cfg, run.layout, run.geometry, run.device
    tr_texts, tr_y, va_texts, va_y = [], [], [], []
    for d in domains:
        t, y = labelled_split(layout, d, "train", geometry)
        tr_texts += t
        tr_y.append(y)
        t, y = labelled_split(layout, d, "val", geometry)
        va_texts += t
        va_y.append(y)
    train_targets, val_targets = torch.cat(tr_y), torch.cat(va_y)

    set_seed(cfg.seed)
    model = build_model(cfg.model, geometry, feature_cache=run.feature_cache)
    model.to(device)  # frozen mode: the encoder encodes (once per text set) where the head trains
    cache = layout.token_cache
    train_ds = make_dataset(model, tr_texts, train_targets, cache_dir=cache, name=f"{name}-train")
    val_ds = make_dataset(model, va_texts, val_targets, cache_dir=cache, name=f"{name}-val")
    train_loader = make_loader(
        train_ds, train_cfg.batch_size, shuffle=True, group_by_length=train_cfg.group_by_length, seed=cfg.seed
    )
    val_loader = make_loader(val_ds, train_cfg.eval_batch_size, shuffle=False, group_by_length=True)
    log.info(
        "training %s %s on %s: %d train / %d val examples, encoder %s, %s on %s",
        role,
        name,
        ", ".join(domains),
        len(train_ds),
        len(val_ds),
        cfg.model.encoder,
        train_cfg.loss,
        device,
    )
    result = fit(
        model,
        teacher_loss(train_cfg, geometry),
        train_loader,
        val_loader,
        train_cfg,
        out_dir=out_dir,
        select_by="macro_f1",
        device=device,
        seed=cfg.seed,
        resume=resume,
        metadata={
            "role": role,
            "name": name,
            "domains": domains,
            "n_train": len(train_ds),
            "n_val": len(val_ds),
            "model": cfg.model.to_dict(),
            "task": cfg.task.to_dict(),
            "experiment": cfg.name,
        },
    )
    return {
        "checkpoint": str(result.best_dir),
        "domains": domains,
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        **result.to_dict(),
    }


def train_teacher(
    run: RunContext,
    role: str = "local",
    domain: str | None = None,
    resume: bool = False,
) -> dict:
    """Train the local teachers (one per local domain, or only ``domain``) or the global model.

    Parameters
    ----------
    run : knot.run.RunContext
        ``run.cfg.local`` / ``run.cfg.global_model`` give the training settings,
        ``run.cfg.model`` the classifier. Reads ``run.layout.data`` (prepared first, from
        ``run.data_root``, when missing); writes ``run.layout.teacher(domain)`` or
        ``run.layout.global_model``.
    role : {"local", "global"}
    domain : str, optional
        Only this local domain.
    resume : bool
        Continue each model after its last completed epoch.

    Returns
    -------
    dict
        ``{"role": ..., "models": {name: {"checkpoint", "n_train", "best_metrics", ...}}}``;
        the global model's name is ``global``.
    """
    cfg, layout = run.cfg, run.layout
    if role not in ("local", "global"):
        raise ValueError(f"role: expected local or global, got {role!r}")
    if role == "global" and domain is not None:
        raise ValueError("--domain selects one local teacher; it cannot be used with --role global")
    if role == "local":
        names = [d.name for d in cfg.domains("local")]
        if not names:
            raise ValueError("the config has no domain with role local")
        if domain is not None:
            if domain not in names:
                known = [d.name for d in cfg.data.domains]
                why = "is not a local domain" if domain in known else "is not a domain of the config"
                raise ValueError(f"--domain {domain}: {why} (local domains: {', '.join(names)})")
            names = [domain]
    else:
        gnames = [d.name for d in cfg.domains("global")]
        if not gnames:
            raise ValueError("the config has no domain with role global")

    _ensure_data(run)
    models: dict[str, dict] = {}
    if role == "local":
        for name in names:
            models[name] = _train_one(
                run,
                name=name,
                role="local",
                domains=[name],
                train_cfg=cfg.local,
                out_dir=layout.teacher(name),
                resume=resume,
            )
    else:
        models["global"] = _train_one(
            run,
            name="global",
            role="global",
            domains=gnames,
            train_cfg=cfg.global_model,
            out_dir=layout.global_model,
            resume=resume,
        )
    return {"role": role, "models": models}
