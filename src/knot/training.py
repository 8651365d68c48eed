"""Generic training loop: model, loss, loaders, :class:`~knot.config.TrainConfig` -> :class:`TrainResult`.

:func:`fit` never looks at what the targets are: the loss is a function
``loss_fn(logits, batch) -> scalar`` of the model's logits and the whole batch dict, so
the same loop trains teachers on hard labels (``batch["target"]`` LongTensor) and
students on soft labels (``batch["target"]`` FloatTensor (B, T, K), ...).

What ``fit(..., out_dir=D)`` writes::

    D/best/           best checkpoint so far (knot.models.save_checkpoint)
    D/last/           resumable state after the last completed epoch: model.safetensors,
                      trainer.pt (optimizer, scheduler, torch RNG; read with
                      weights_only=True) and state.json (epoch, history, selection
                      state); once training is over only state.json is kept
    D/metrics.jsonl   one JSON object per completed epoch

``knot.models.load(D)`` loads ``D/best``. With ``resume=True`` training continues after
the last completed epoch and ends with the same weights as an uninterrupted run (same
seed, same device): each epoch's batch order depends only on ``(seed, epoch)`` and the
RNG states are restored.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from knot.metrics import evaluate_probs
from knot.models import save_checkpoint
from knot.progress import progress as progress_bar
from knot.utils import atomic_dir, atomic_write_text, read_json, set_seed, sha256_json

__all__ = [
    "TrainResult",
    "SelectionState",
    "fit",
    "train_epoch",
    "evaluate",
    "predict_loader",
    "model_logits",
    "make_optimizer",
    "make_scheduler",
    "LOWER_IS_BETTER",
]

log = logging.getLogger(__name__)

LOWER_IS_BETTER = {"loss", "semantic_distance", "expected_cost"}

LossFn = Callable[[torch.Tensor, dict], torch.Tensor]
EvalFn = Callable[[np.ndarray, np.ndarray, Any], dict]


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    best_metrics : dict
        Validation metrics of the selected epoch.
    history : list of dict
        One entry per completed epoch (also in ``out_dir/metrics.jsonl``).
    best_dir : Path
        The best checkpoint (``out_dir/best``).
    best_epoch : int
        1-based epoch of the best checkpoint.
    stopped_early : bool
    resumed_from : int
        The epochs already done when this call started (resume).
    initial_metrics : dict
        Validation metrics of the starting model (``fit(..., evaluate_initial=True)`` or
        ``keep_initial=True``; empty otherwise or without a val set). Best epoch 0: the
        starting model was kept.
    """

    best_metrics: dict
    history: list[dict]
    best_dir: Path
    best_epoch: int
    stopped_early: bool = False
    resumed_from: int = 0
    initial_metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "best_metrics": self.best_metrics,
            "best_epoch": self.best_epoch,
            "best_dir": str(self.best_dir),
            "stopped_early": self.stopped_early,
            "epochs_completed": len(self.history),
            "resumed_from": self.resumed_from,
        }


# ---------------------------------------------------------------------------
# optimiser and schedule
# ---------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases and normalisation weights (1-D parameters) get no weight decay.

    Build it after moving the model to its device (the fused kernel is chosen there).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    params = decay + no_decay
    # The fused kernel is several times faster (a large embedding matrix dominates the
    # step on CPU) and exists for floating-point parameters on CPU and CUDA.
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    )
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio * total_steps`` steps, then a constant rate.

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = make_scheduler(opt, total_steps=10, warmup_ratio=0.3)
    >>> rates = []
    >>> for _ in range(5):
    ...     rates.append(round(sched.get_last_lr()[0], 3)); opt.step(); sched.step()
    >>> rates
    [0.333, 0.667, 1.0, 1.0, 1.0]
    """
    warmup = int(math.ceil(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def model_logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The model's logits (B, K) for a batch: ``model(features, feature_mask)`` for
    cached frozen-encoder features (:class:`knot.features.FeatureDataset` batches),
    else ``model(input_ids, attention_mask)``. The only place the loop calls a model."""
    if "features" in batch:
        return model(batch["features"], batch.get("feature_mask"))
    return model(batch["input_ids"], batch["attention_mask"])


def _to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {
        k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
    }


@torch.inference_mode()
def predict_loader(
    model: torch.nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    loss_fn: LossFn | None = None,
) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Probabilities for every item of ``loader``, in dataset order.

    Returns
    -------
    probs : np.ndarray (N, K) float32
    targets : np.ndarray (N, ...) or None
        The batches' ``target`` entries, in dataset order.
    loss : float or None
        Mean of ``loss_fn`` over items (batch losses weighted by batch size).
    """
    was_training = model.training
    model.eval()
    probs_parts, target_parts, index_parts = [], [], []
    loss_sum, n_seen = 0.0, 0
    try:
        for batch in loader:
            batch = _to_device(batch, device)
            logits = model_logits(model, batch)  # (B, K)
            b = logits.shape[0]
            if loss_fn is not None:
                loss_sum += float(loss_fn(logits, batch)) * b
            n_seen += b
            probs_parts.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
            if "target" in batch:
                target_parts.append(batch["target"].cpu().numpy())
            if "index" in batch:
                index_parts.append(batch["index"].cpu().numpy())
    finally:
        model.train(was_training)
    k = getattr(model, "num_labels", None)
    probs = np.concatenate(probs_parts) if probs_parts else np.zeros((0, k or 0), np.float32)
    targets = np.concatenate(target_parts) if target_parts else None
    if index_parts:
        index = np.concatenate(index_parts)
        order = np.argsort(index, kind="stable")
        probs = probs[order]
        if targets is not None:
            targets = targets[order]
    loss = loss_sum / n_seen if (loss_fn is not None and n_seen) else None
    return probs, targets, loss


def _default_eval(probs: np.ndarray, targets: np.ndarray | None, geometry: Any) -> dict:
    """Classification metrics when the targets are class indices; nothing otherwise."""
    if targets is None or targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
        return {}
    return dict(evaluate_probs(probs, targets, geometry))


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    loss_fn: LossFn | None = None,
    eval_fn: EvalFn | None = None,
) -> dict:
    """Validation metrics: ``loss`` (when ``loss_fn`` is given) plus ``eval_fn``'s metrics.

    ``eval_fn(probs (N, K), targets (N, ...), geometry) -> dict``; by default
    :func:`knot.metrics.evaluate_probs` when the targets are class indices.
    """
    probs, targets, loss = predict_loader(model, loader, device, loss_fn)
    fn = eval_fn or _default_eval
    metrics = {k: _plain_number(v) for k, v in fn(probs, targets, getattr(model, "geometry", None)).items()}
    metrics.setdefault("n", int(probs.shape[0]))
    if loss is not None:
        metrics["loss"] = loss
    return metrics


def _plain_number(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return v


# ---------------------------------------------------------------------------
# resumable state
# ---------------------------------------------------------------------------


def _rng_state() -> tuple[dict, dict]:
    py = random.getstate()
    npst = np.random.get_state()
    json_part = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
    }
    tensor_part = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensor_part["cuda"] = torch.cuda.get_rng_state_all()
    return json_part, tensor_part


def _set_rng_state(json_part: dict, tensor_part: dict) -> None:
    py = json_part["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = json_part["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(tensor_part["torch"])
    if "cuda" in tensor_part and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensor_part["cuda"])


def _save_last(out_dir: Path, model, optimizer, scheduler, state: dict) -> None:
    from safetensors.torch import save_file

    json_rng, tensor_rng = _rng_state()
    with atomic_dir(out_dir / "last") as tmp:
        weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": tensor_rng},
            tmp / "trainer.pt",
        )
        (tmp / "state.json").write_text(
            json.dumps({**state, "rng": json_rng}, default=str) + "\n", encoding="utf-8"
        )


def _peek_state(out_dir: Path) -> dict:
    try:
        return read_json(out_dir / "last" / "state.json")
    except ValueError as exc:
        raise ValueError(f"corrupt resume state ({exc})") from None


def _load_last(out_dir: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    last = out_dir / "last"
    for name in ("state.json", "model.safetensors", "trainer.pt"):
        if not (last / name).is_file():
            raise FileNotFoundError(f"{last / name}: resume state incomplete")
    state = _peek_state(out_dir)
    try:
        weights = load_file(str(last / "model.safetensors"))
    except Exception as exc:
        raise ValueError(f"{last / 'model.safetensors'}: corrupt resume weights ({exc})") from None
    trainer_file = last / "trainer.pt"
    try:  # weights_only: tensors and plain data only, never an arbitrary pickled object
        trainer = torch.load(trainer_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message is many lines and suggests weights_only=False: unsafe here
        raise ValueError(
            f"{trainer_file}: refused: holds more than tensors and plain data (knot never "
            f"unpickles other objects; delete {last} to train from the start)"
        ) from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{trainer_file}: corrupt resume state ({reason})") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"{last / 'model.safetensors'}: does not fit this model ({exc})") from None
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    _set_rng_state(state.pop("rng"), trainer["rng"])
    return state


def _finish_last(out_dir: Path) -> None:
    """After the last epoch, keep only ``last/state.json`` (marked complete).

    The weights and optimiser moments are two to three times the checkpoint's size and
    are not needed once training is over; a resume of a finished run then trains
    nothing.
    """
    last = out_dir / "last"
    file = last / "state.json"
    if not file.is_file():
        return
    state = _peek_state(out_dir)
    if state.get("complete"):
        return
    state["complete"] = True
    with atomic_dir(last) as tmp:
        (tmp / "state.json").write_text(json.dumps(state, default=str) + "\n", encoding="utf-8")


def _write_history(out_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(h, default=str) + "\n" for h in history)
    atomic_write_text(out_dir / "metrics.jsonl", text)


def _better(value: float, best: float | None, lower: bool) -> bool:
    if best is None:
        return True
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value < best if lower else value > best


# ---------------------------------------------------------------------------
# the loop
@dataclass
class SelectionState:
    """Model selection across epochs: what :func:`fit` carries from one epoch to the next
    and saves in ``last/state.json`` so a resumed run continues the same selection.

    >>> s = SelectionState()
    >>> s.update(epoch=1, value=0.5, metrics={"macro_f1": 0.5}, lower=False)
    True
    >>> s.update(epoch=2, value=0.4, metrics={"macro_f1": 0.4}, lower=False)
    False
    >>> s.best_epoch, s.bad_epochs, s.patience_exhausted(1)
    (1, 1, True)
    """

    epoch: int = 0  # completed epochs
    history: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    best_metrics: dict = field(default_factory=dict)
    bad_epochs: int = 0
    stopped: bool = False

    @classmethod
    def from_dict(cls, state: dict) -> "SelectionState":
        """From a saved ``state.json`` (other keys are ignored)."""
        return cls(
            epoch=int(state["epoch"]),
            history=list(state["history"]),
            best_value=state["best_value"],
            best_epoch=int(state["best_epoch"]),
            best_metrics=dict(state["best_metrics"]),
            bad_epochs=int(state["bad_epochs"]),
            stopped=bool(state.get("stopped", False)),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def patience_exhausted(self, patience: int | None) -> bool:
        """Whether ``patience`` epochs in a row have not improved (never, without patience)."""
        return patience is not None and self.bad_epochs >= patience

    def initial_wins(self, initial: dict, select_by: str) -> bool:
        """Whether the starting model (validation metrics ``initial``, "epoch 0") beats the
        best trained epoch on ``select_by``; ties go to the trained epoch.

        >>> s = SelectionState(best_epoch=1, best_metrics={"loss": 0.2})
        >>> s.initial_wins({"loss": 0.1}, "loss"), s.initial_wins({"loss": 0.2}, "loss"), s.initial_wins({}, "loss")
        (True, False, False)
        """
        a, b = initial.get(select_by), self.best_metrics.get(select_by)
        if a is None or b is None:
            return False
        return a < b if select_by in LOWER_IS_BETTER else a > b

    def update(self, epoch: int, value: float | None, metrics: dict, lower: bool, always: bool = False) -> bool:
        """Record finished epoch ``epoch`` (1-based) with validation ``value``; returns
        whether it is the new best (``always``: every epoch is, when there is no val set)."""
        self.epoch = epoch
        improved = always or _better(value, self.best_value, lower)
        if improved:
            self.best_value, self.best_epoch, self.best_metrics, self.bad_epochs = value, epoch, metrics, 0
        else:
            self.bad_epochs += 1
        return improved


# ---------------------------------------------------------------------------


def _resume_state(out_dir: Path, fingerprint: str, train_cfg: Any, model, optimizer, scheduler) -> dict | None:
    """The saved selection state to continue from (model, optimiser, scheduler and RNG
    restored from ``out_dir/last``), or None to start from epoch 1."""
    if not (out_dir / "last" / "state.json").is_file():
        log.info("%s: nothing to resume, starting from epoch 1", out_dir)
        return None
    saved = _peek_state(out_dir)
    if saved.get("fingerprint") != fingerprint:
        log.warning(
            "%s: the saved state was trained with other settings (model, data, loss or "
            "optimiser); starting again from epoch 1",
            out_dir / "last",
        )
        return None
    if not saved.get("complete"):
        return _load_last(out_dir, model, optimizer, scheduler)
    done = SelectionState.from_dict(saved)
    if done.epoch >= train_cfg.epochs or (done.stopped and done.patience_exhausted(train_cfg.early_stopping_patience)):
        return saved  # finished: nothing to train, the best checkpoint stands
    log.warning(
        "%s: the finished run kept no optimiser state to continue from; "
        "training again from epoch 1 to reach %d epochs (use keep_last_state=True "
        "to keep it)",
        out_dir / "last",
        train_cfg.epochs,
    )
    return None


def train_epoch(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    *,
    device: torch.device,
    steps: int,
    grad_clip: float | None = None,
    desc: str = "train",
    where: str = "",
    out_dir: Path | None = None,
    progress: bool | None = None,
) -> dict:
    """One training epoch of at most ``steps`` batches; returns ``train_loss`` (mean over
    the items), ``train_samples``, ``train_steps``, ``train_seconds``, ``samples_per_s``, ``lr``.

    Raises ``FloatingPointError`` on a non-finite loss (naming ``where``: the epoch, step
    and training folder).
    """
    model.train()
    t0 = time.perf_counter()
    loss_sum, n_items, n_steps = 0.0, 0, 0
    bar = progress_bar(total=steps, desc=desc, unit="batch", enabled=progress)
    try:
        for batch in train_loader:
            if n_steps >= steps:
                break
            batch = _to_device(batch, device)
            logits = model_logits(model, batch)  # (B, K)
            loss = loss_fn(logits, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"fit: loss is {float(loss.detach())} at {where or desc}, step {n_steps + 1}"
                    + (f" ({out_dir})" if out_dir is not None else "") + "; try a lower lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            b = logits.shape[0]
            loss_sum += float(loss.detach()) * b
            n_items += b
            n_steps += 1
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_items:.4f}", sps=f"{n_items / max(elapsed, 1e-9):.0f}")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return {
        "train_loss": loss_sum / max(n_items, 1),
        "train_samples": n_items,
        "train_steps": n_steps,
        "train_seconds": round(seconds, 3),
        "samples_per_s": n_items / max(seconds, 1e-9),
        "lr": scheduler.get_last_lr()[0],
    }


def fit(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_loader,
    val_loader,
    train_cfg,
    *,
    out_dir,
    select_by: str = "macro_f1",
    device: torch.device | str | None = None,
    seed: int = 0,
    resume: bool = False,
    eval_fn: EvalFn | None = None,
    metadata: dict | None = None,
    progress: bool | None = None,
    keep_last_state: bool = False,
    on_epoch: Callable[[int, int], dict] | None = None,
    val_loss_fn: LossFn | None = None,
    evaluate_initial: bool = False,
    keep_initial: bool = False,
) -> TrainResult:
    """Train ``model`` with AdamW, evaluate each epoch, keep the best checkpoint.

    Parameters
    ----------
    model : KnotClassifier or FrozenClassifier (any module that
        :func:`knot.models.save_checkpoint` can save and :func:`model_logits` can call:
        ``(input_ids, attention_mask)`` or ``(features, feature_mask)`` -> logits (B, K))
    loss_fn : callable
        ``loss_fn(logits (B, K), batch) -> scalar tensor``; ``batch`` is the loader's
        dict moved to ``device``.
    train_loader, val_loader : loaders from :func:`knot.batching.make_loader`
        ``val_loader`` may be None: then every epoch is kept as the best.
    train_cfg : knot.config.TrainConfig
        ``epochs``, ``lr``, ``weight_decay``, ``warmup_ratio``, ``grad_clip``,
        ``early_stopping_patience`` (epochs without improvement), ``max_steps`` (per epoch).
    out_dir : path
        Training folder (see the module docstring).
    select_by : str
        Validation metric that picks the best epoch: ``loss`` (``loss_fn`` on the val
        batches), ``semantic_distance``, ``expected_cost`` (lower is better) or any other
        metric (higher is better, e.g. ``macro_f1``, ``accuracy``).
    device : optional
        Default: where the model is.
    seed : int
        Seeds torch/NumPy/Python at the start and fixes each epoch's batch order.
    resume : bool
        Continue after the last completed epoch in ``out_dir/last``.
    eval_fn : callable, optional
        ``eval_fn(probs (N, K), targets (N, ...), geometry) -> dict`` of validation
        metrics; default :func:`knot.metrics.evaluate_probs` for class-index targets.
    metadata : dict, optional
        Extra entries for the checkpoint's ``config.json`` (role, domain, n_train, ...).
    progress : bool, optional
        Progress bar; default: only on a terminal.
    keep_last_state : bool
        Keep the resumable weights and optimiser state in ``out_dir/last`` after the
        final epoch (to extend the run later with more epochs). By default only
        ``last/state.json`` is kept once training is over.
    on_epoch : callable, optional
        ``on_epoch(epoch, epochs) -> dict``, called before each training epoch (``epoch``
        from 0) so that a loss can follow a schedule over the epochs; the dict's entries are
        added to the epoch's record in ``metrics.jsonl`` (e.g. ``{"lam": 0.8}``).
    val_loss_fn : callable, optional
        The validation loss (default ``loss_fn``), e.g. a scheduled loss at a fixed weight
        so that every epoch is scored on the same objective.
    evaluate_initial : bool
        Score the starting model on the val set first (``TrainResult.initial_metrics``).
    keep_initial : bool
        The starting model competes as epoch 0 (implies ``evaluate_initial``): when no
        trained epoch beats it on ``select_by``, ``best/`` holds the starting weights
        (``best_epoch`` 0). Epochs are selected, and patience counted, among themselves.

    Returns
    -------
    TrainResult
        The model is left holding the best checkpoint's weights.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    lower = select_by in LOWER_IS_BETTER
    epochs = train_cfg.epochs
    steps_per_epoch = len(train_loader)
    if train_cfg.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, train_cfg.max_steps)
    if steps_per_epoch == 0:
        raise ValueError("fit: the training set is empty")
    cfg_dict = train_cfg.to_dict() if hasattr(train_cfg, "to_dict") else dict(vars(train_cfg))
    stamp = {"train": cfg_dict, "select_by": select_by, "seed": seed}  # besides metadata, in every best/

    model.to(device)
    initial: dict = {}
    initial_state = None
    if (evaluate_initial or keep_initial) and val_loader is not None:
        initial = evaluate(model, val_loader, device, val_loss_fn or loss_fn, eval_fn)
        if keep_initial:
            initial_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, train_cfg.lr, train_cfg.weight_decay)
    scheduler = make_scheduler(optimizer, epochs * steps_per_epoch, train_cfg.warmup_ratio)

    # What must not change for a resume to continue the same training (epochs and
    # patience may: a finished run can be extended).
    fingerprint = sha256_json(
        {
            "train": {k: v for k, v in cfg_dict.items() if k not in ("epochs", "early_stopping_patience")},
            "metadata": metadata or {},
            "select_by": select_by,
            "seed": seed,
        }
    )
    state = _resume_state(out_dir, fingerprint, train_cfg, model, optimizer, scheduler) if resume else None
    sel = SelectionState()
    if state is not None:
        sel = SelectionState.from_dict(state)
        if sel.stopped and not sel.patience_exhausted(train_cfg.early_stopping_patience):
            sel.stopped = False  # patience was raised: carry on
        log.info("resuming %s after epoch %d", out_dir, sel.epoch)
    else:
        set_seed(seed)
    resumed_from = sel.epoch

    sampler = getattr(train_loader, "batch_sampler", None)
    for epoch in range(sel.epoch, epochs):
        if sel.stopped:
            break
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        scheduled = dict(on_epoch(epoch, epochs)) if on_epoch is not None else {}
        trained = train_epoch(
            model, loss_fn, train_loader, optimizer, scheduler, device=device, steps=steps_per_epoch,
            grad_clip=train_cfg.grad_clip, desc=f"train epoch {epoch + 1}/{epochs}", progress=progress,
            where=f"epoch {epoch + 1}", out_dir=out_dir,
        )
        record: dict[str, Any] = {"epoch": epoch + 1, **trained, **scheduled}
        if val_loader is not None:
            val = evaluate(model, val_loader, device, val_loss_fn or loss_fn, eval_fn)
            if select_by not in val:
                raise ValueError(
                    f"fit: select_by={select_by!r} is not a validation metric "
                    f"(have: {', '.join(sorted(val))})"
                )
            value = val[select_by]
        else:
            val, value = {}, None
        record["val"] = val
        improved = sel.update(epoch + 1, value, val, lower, always=val_loader is None)
        record["best"] = improved
        if improved:
            save_checkpoint(model, out_dir / "best", {**(metadata or {}), **_best_stamp(stamp, val, epoch + 1)})
        sel.history.append(record)
        if sel.patience_exhausted(train_cfg.early_stopping_patience) and epoch + 1 < epochs:
            sel.stopped = True
        _save_last(
            out_dir, model, optimizer, scheduler,
            {**sel.to_dict(), "select_by": select_by, "seed": seed, "train": cfg_dict, "fingerprint": fingerprint},
        )
        _write_history(out_dir, sel.history)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in val.items() if isinstance(v, float))
        log.info(
            "epoch %d/%d: train_loss=%.4f, %.0f samples/s%s%s",
            epoch + 1,
            epochs,
            record["train_loss"],
            record["samples_per_s"],
            f"; val {shown}" if shown else "",
            " (best)" if improved else "",
        )
        if sel.stopped:
            log.info("early stopping after epoch %d (best epoch %d)", epoch + 1, sel.best_epoch)

    if not keep_last_state and sel.history:
        _finish_last(out_dir)
    best_dir = out_dir / "best"
    best_metrics, best_epoch = sel.best_metrics, sel.best_epoch
    if initial_state is not None and sel.initial_wins(initial, select_by):
        # the reference's rule: the start is only replaced by an epoch that beats it on val
        log.info("%s: no epoch beat the initial model on val %s; keeping the initial weights", out_dir, select_by)
        model.load_state_dict(initial_state)
        save_checkpoint(model, best_dir, {**(metadata or {}), **_best_stamp(stamp, initial, 0)})
        best_metrics, best_epoch = initial, 0
    elif (best_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(best_dir / "model.safetensors")), strict=False)
    return TrainResult(
        best_metrics=best_metrics,
        history=sel.history,
        best_dir=best_dir,
        best_epoch=best_epoch,
        stopped_early=sel.stopped,
        resumed_from=resumed_from,
        initial_metrics=initial,
    )


def _best_stamp(stamp: dict, metrics: dict, epoch: int) -> dict:
    """The training entries of a ``best/`` checkpoint's metadata, in their saved order."""
    return {"train": stamp["train"], "metrics": metrics, "epoch": epoch, "select_by": stamp["select_by"],
            "seed": stamp["seed"]}
