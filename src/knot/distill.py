"""Student stage: the distillation losses of :mod:`knot.losses` wired into :func:`knot.training.fit`.

One student per :class:`~knot.config.DistillMethod` of ``cfg.distill.methods``. Each
student starts from the global model's checkpoint (``distill.init: global``, the
reference's setting) or from a fresh model (``scratch``) and is trained on the transfer
set's texts against the teachers' soft labels only (:class:`~knot.soft_labels.SoftLabels`);
gold labels of the transfer set are never read here.

Per batch the loss is ::

    distillation_loss(method.loss, logits (B, K), teacher_probs (B, T, K), weights (B, T),
                      geometry, aggregate=method.aggregate, temperature=method.temperature,
                      **method.options)

with the teacher weights of :func:`knot.soft_labels.teacher_weights` (``uniform``,
``size``, ``explicit`` or per-example ``bias``). ``geometry`` is the task geometry unless
the method sets its own (``DistillMethod.geometry``, :func:`loss_geometry`); only the loss
uses the method's geometry (model, evaluation and Semantic Distance keep the task's), and
``RUN/students/<method>/geometry_loss.json`` records the geometry the loss used. A learned
cost (``geometry: {learned: soft_labels | head}``) is made here, from the teachers' train
soft labels or from the output layer of the global model (the student's start), and is also
kept in the student checkpoint's metadata (``loss_geometry``).

Per-student ``sharpen`` sharpens the teacher mixture (DS-FL), and ``schedule`` moves the
``lam`` of ``ot_kl`` over the epochs: :func:`lambda_of_epoch` gives the weight of each
epoch, :func:`knot.training.fit` calls it before the epoch (``on_epoch``) and records it as
``lam`` in ``metrics.jsonl``; the val loss uses the last epoch's weight (``end``) in every epoch, so that the epochs (and
the start, epoch 0) are compared on one objective.

The best epoch is chosen on the transfer set's val split, by the distillation loss against
its soft labels (``distill.select_by: loss``, the reference's rule) or by a metric against
the teachers' weighted consensus (the argmax of the weighted teacher average). As in the
reference, the starting model counts as epoch 0: when no epoch beats it on the val split,
the student keeps its initial weights (``distill.keep_initial: false`` keeps the best
trained epoch instead). Students are saved like teachers
(``RUN/students/<method>/best``, ``last``, ``metrics.jsonl``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch

from knot.batching import make_loader
from knot.config import DistillMethod
from knot.data import load_split
from knot.geometry import LabelGeometry, parse_learned_spec
from knot.losses import distillation_loss, lambda_schedule, loss_uses_geometry
from knot.metrics import evaluate_probs
from knot.models import build_model, class_weight_rows, load, make_dataset
from knot.run import RunContext, has_checkpoint
from knot.soft_labels import SoftLabels, load_bias, teacher_weights, texts_hash
from knot.training import fit
from knot.utils import atomic_write_json, set_seed, sha256_file

__all__ = [
    "distill", "select_methods", "weight_rows", "make_loss_fn", "consensus_eval_fn",
    "method_weights", "loss_geometry", "GEOMETRY_LOSS_FILE", "lambda_of_epoch", "learned_inputs",
]

#: File in each student's folder with the geometry its loss used (labels, coords, p, name, cost).
GEOMETRY_LOSS_FILE = "geometry_loss.json"

log = logging.getLogger(__name__)


def weight_rows(weights: Any, n: int) -> torch.Tensor:
    """Teacher weights as one row per example: FloatTensor (N, T) from (T,) or (N, T).

    >>> weight_rows(np.array([0.2, 0.8]), 3).shape
    torch.Size([3, 2])
    """
    w = np.asarray(weights, dtype=np.float32)
    return torch.from_numpy(np.broadcast_to(w, (n, w.shape[-1])).copy())


def make_loss_fn(
    method: Any, geometry: Any, weights: Any, lam: float | Callable[[], float] | None = None
) -> Callable[[torch.Tensor, dict], torch.Tensor]:
    """``loss_fn(logits, batch)`` for :func:`knot.training.fit` from one DistillMethod.

    ``batch["target"]`` holds the soft labels (B, T, K) and ``batch["index"]`` (B,) the
    rows of the dataset; ``weights`` are the teacher weights of that dataset's rows, (N, T)
    (or (T,), the same for every row), kept beside the soft labels and looked up per batch.
    ``lam`` (a number, or a callable read at every call) replaces the ``lam`` option.
    """
    options = dict(method.options)
    sharpen = getattr(method, "sharpen", None)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))  # (N, T) or (T,)

    def loss_fn(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        target = batch["target"]  # (B, T, K)
        b, t = target.shape[0], target.shape[1]
        rows = w.expand(b, t) if w.dim() == 1 else w[batch["index"].cpu()]  # (B, T)
        if lam is not None:
            options["lam"] = lam() if callable(lam) else lam
        return distillation_loss(
            method.loss,
            logits,
            target,
            rows.to(target.device),
            geometry,
            aggregate=method.aggregate,
            temperature=method.temperature,
            sharpen=sharpen,
            **options,
        )

    return loss_fn


def lambda_of_epoch(method: Any) -> Callable[[int, int], float] | None:
    """``lam(epoch, epochs)`` of a method's ``schedule`` (epoch from 0), or None without one.

    The schedule (:func:`knot.losses.lambda_schedule`) is read at progress
    ``epoch / (epochs - 1)``: the first epoch trains with ``start``, the last with ``end``.

    >>> from knot.config import DistillMethod
    >>> m = DistillMethod(loss="ot_kl", schedule={"kind": "linear", "start": 1.0, "end": 0.0})
    >>> [lambda_of_epoch(m)(e, 5) for e in range(5)]
    [1.0, 0.75, 0.5, 0.25, 0.0]
    """
    spec = getattr(method, "schedule", None)
    if spec is None:
        return None
    f = lambda_schedule(**spec)
    return lambda epoch, epochs: f(epoch / max(epochs - 1, 1))


def learned_inputs(method: Any, soft_labels: SoftLabels, model: Any, global_name: str | None) -> dict:
    """What a method's learned geometry is computed from (empty when it has none).

    ``soft_labels``: the (N, T, K) train soft labels of the teachers this student learns from
    (the global model's column dropped with ``teachers: local``); ``head``: the class rows of
    ``model``'s output layer (the student's start, :func:`knot.models.class_weight_rows`).
    """
    spec = parse_learned_spec(getattr(method, "geometry", None))
    if spec is None:
        return {}
    if spec["from"] == "head":
        return {"head_rows": class_weight_rows(model)}
    probs = np.asarray(soft_labels.probs)
    names = list(soft_labels.teacher_names)
    if getattr(method, "teachers", None) == "local" and global_name in names:
        probs = np.delete(probs, names.index(global_name), axis=1)
    return {"soft_labels": probs}


def consensus_eval_fn(weights: Any) -> Callable[[np.ndarray, np.ndarray | None, Any], dict]:
    """``eval_fn(probs, targets, geometry)`` scoring against the teachers' weighted consensus
    (no gold labels): ``targets`` are the soft labels (N, T, K) in dataset order, ``weights``
    the teacher weights of those rows, (N, T) or (T,); the reference label of example n is
    ``argmax_k sum_j w_nj p_njk``. The metrics are :func:`knot.metrics.evaluate_probs`'s.
    """

    def eval_fn(probs: np.ndarray, targets: np.ndarray | None, geometry: Any) -> dict:
        if targets is None:
            return {}
        p = targets.astype(np.float64)  # (N, T, K)
        w = weight_rows(weights, p.shape[0]).numpy().astype(np.float64)  # (N, T)
        mixture = np.einsum("nt,ntk->nk", w / w.sum(axis=1, keepdims=True), p)
        return dict(evaluate_probs(probs, mixture.argmax(axis=1), geometry))

    return eval_fn


def select_methods(cfg: Any, method: Any = None, loss: str | None = None) -> list[Any]:
    """The DistillMethods to run.

    ``method``: None (all of ``cfg.distill.methods``), a method name, a list of names, or a
    :class:`~knot.config.DistillMethod`. ``loss``: keep the methods with this loss; when
    the config has none, one default method named after the loss is made.
    """
    configured = list(cfg.distill.methods)
    if isinstance(method, DistillMethod):
        chosen = [method]
    elif method is None:
        chosen = configured
    else:
        names = [method] if isinstance(method, str) else list(method)
        by_name = {m.name: m for m in configured}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(
                f"--method {', '.join(unknown)}: not in distill.methods (have: {', '.join(by_name) or 'none'})"
            )
        chosen = [by_name[n] for n in names]
    if loss is not None:
        kept = [m for m in chosen if m.loss == loss]
        if not kept:
            if method is not None:
                raise ValueError(f"--loss {loss}: the selected method(s) use other losses")
            kept = [DistillMethod(name=loss, loss=loss)]
        chosen = kept
    if not chosen:
        raise ValueError("distill.methods: no student to train")
    return chosen


def loss_geometry(method: Any, geometry: Any, learned: dict | None = None) -> Any:
    """The label geometry of one method's loss.

    ``method.geometry`` when set (any :meth:`~knot.geometry.LabelGeometry.from_spec` spec),
    with the task's labels in the task's order and the task's cost power, a derived or
    learned spec scaled against the task geometry when it says ``scale: task``; else the
    task geometry. ``learned`` holds a learned spec's inputs (:func:`learned_inputs`).

    Parameters
    ----------
    method : knot.config.DistillMethod
    geometry : knot.geometry.LabelGeometry
        The task geometry (model, evaluation and Semantic Distance always use it).

    >>> from knot.config import DistillMethod
    >>> from knot.geometry import LabelGeometry
    >>> task = LabelGeometry.preset("sentiment5")
    >>> loss_geometry(DistillMethod(), task) is task
    True
    >>> m = DistillMethod(geometry={"5": [4], "4": [3], "3": [2], "2": [1], "1": [0]})
    >>> loss_geometry(m, task).labels == task.labels
    True
    """
    spec = getattr(method, "geometry", None)
    p = getattr(method, "cost_power", None) or geometry.p
    if p != geometry.p:  # the loss's cost power: the task geometry's points, costs to the power p
        geometry = LabelGeometry(geometry.labels, geometry.coords, p=p, name=geometry.name)
    if spec is None:
        return geometry
    try:
        return LabelGeometry.from_spec(spec, labels=geometry.labels, p=p, reference=geometry, learned_inputs=learned)
    except ValueError as exc:
        raise ValueError(f"distill method {method.name!r}: {exc}") from None


def _save_loss_geometry(method: Any, loss_geo: Any, task_spec: Any, out_dir: Any) -> None:
    """Write ``out_dir/geometry_loss.json`` (LabelGeometry.to_dict plus ``cost`` (K, K),
    ``source`` method|task and the config ``spec``) and log the cost matrix."""
    source = "task" if getattr(method, "geometry", None) is None else "method"
    if source == "method" and not loss_uses_geometry(method.loss):
        log.warning("student %s: loss %s does not use a label geometry; its geometry is unused", method.name, method.loss)
    cost = loss_geo.cost
    atomic_write_json(
        out_dir / GEOMETRY_LOSS_FILE,
        {
            **loss_geo.to_dict(),
            "cost": cost.tolist(),
            "source": source,
            "spec": task_spec if source == "task" else method.geometry,
        },
    )
    rows = "\n".join(
        f"  {label:>12s} " + " ".join(f"{v:7.3f}" for v in row) for label, row in zip(loss_geo.labels, cost.tolist())
    )
    log.info("student %s: loss geometry %r (from the %s), cost matrix:\n%s", method.name, loss_geo, source, rows)


def method_weights(method: Any, soft_labels: SoftLabels, bias: dict | None, global_name: str | None = None) -> np.ndarray:
    """Teacher weights of one method for these soft labels: (T,) or (N, T).

    With ``method.teachers == "local"`` the column of the global model (``global_name``)
    is set to 0 and the rest renormalised (per example for (N, T) weights).

    >>> from knot.config import DistillMethod
    >>> sl = SoftLabels(np.full((2, 3, 2), 0.5), ["a", "b", "global"], ["x", "y"], teacher_sizes=[1, 3, 4])
    >>> method_weights(DistillMethod(weights="size", teachers="local"), sl, None, "global").tolist()
    [0.25, 0.75, 0.0]
    """
    w = teacher_weights(
        method.weights,
        soft_labels,
        explicit=method.explicit_weights,
        bias=(bias or {}).get("distribution") if method.weights == "bias" else None,
        base=method.bias_base,
        floor=method.bias_floor,
    )
    if getattr(method, "teachers", None) != "local":
        return w
    names = list(soft_labels.teacher_names)
    if global_name is None or global_name not in names:
        raise ValueError(f"distill method {method.name!r}: teachers: local, but the run has no global teacher")
    if len(names) < 2:
        raise ValueError(f"distill method {method.name!r}: teachers: local leaves no teacher")
    w = np.array(w, dtype=np.float64, copy=True)
    w[..., names.index(global_name)] = 0.0
    total = w.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError(f"distill method {method.name!r}: the local teachers' weights sum to 0")
    return w / total


def _load_soft_labels(layout: Any, split: str, teachers: Sequence[str], labels: Sequence[str], texts: Sequence[str]) -> SoftLabels:
    sl = SoftLabels.load(layout.soft_labels, split)
    source = str(layout.soft_labels / f"{split}.json")
    sl.check_matches(teachers, labels, source=source)
    if sl.num_examples != len(texts) or (sl.texts_sha256 and sl.texts_sha256 != texts_hash(texts)):
        raise ValueError(
            f"{source}: made for other texts than the prepared transfer split ({sl.num_examples} rows, "
            f"{len(texts)} texts); rerun `knot soft-labels`"
        )
    return sl


def distill(
    run: RunContext,
    method: Any = None,
    *,
    loss: str | None = None,
    resume: bool = False,
) -> dict:
    """Train one student per selected method (see :func:`select_methods`).

    Parameters
    ----------
    run : knot.run.RunContext
        Reads ``run.layout.soft_labels`` (train, and val when present), ``bias.json`` for
        ``bias`` weights, the prepared transfer texts and ``layout.global_model``; writes
        ``layout.student(name)``.
    method, loss : which students (see :func:`select_methods`).
    resume : bool
        Continue each student after its last completed epoch.

    Returns
    -------
    dict ``{"students": {name: {"checkpoint", "init", "initial_val", "best_metrics", ...}}}``
    """
    cfg, layout = run.cfg, run.layout
    methods = select_methods(cfg, method, loss)
    device, geometry = run.device, run.geometry
    transfer = run.transfer_domain()
    teacher_models = run.teachers()
    teachers = [r.name for r in teacher_models]

    train_texts = [e.text for e in load_split(layout.data, transfer.name, "train")]
    train_sl = _load_soft_labels(layout, "train", teachers, geometry.labels, train_texts)
    val_sl, val_texts = None, []
    if (layout.soft_labels / "val.json").is_file():
        val_texts = [e.text for e in load_split(layout.data, transfer.name, "val")]
        val_sl = _load_soft_labels(layout, "val", teachers, geometry.labels, val_texts)
    else:
        log.warning("no soft labels for the transfer val split: every epoch replaces the previous best")
    bias = None
    if any(m.weights == "bias" for m in methods):
        bias = load_bias(layout.soft_labels, teachers)
    soft_hashes = {
        s: sha256_file(layout.soft_labels / f"{s}.safetensors") for s in ("train", "val") if (layout.soft_labels / f"{s}.json").is_file()
    }

    global_name = next((r.name for r in teacher_models if r.kind == "global"), None)
    out: dict[str, Any] = {"students": {}}
    for m in methods:
        init = m.init or cfg.distill.init
        if init == "global" and not cfg.domains("global"):
            log.warning("distill.init is global but the config has no global domain: students start from scratch")
            init = "scratch"
        if init == "global" and not has_checkpoint(layout.global_model):
            raise FileNotFoundError(
                f"{layout.global_model}: no global model checkpoint to initialise student {m.name!r} from; "
                "run `knot train CONFIG --role global` first or set "
                + (f"init: scratch on method {m.name!r}" if m.init else "distill.init: scratch")
            )
        train_cfg = cfg.distill.train if m.lr is None else dataclasses.replace(cfg.distill.train, lr=m.lr)
        w_train = method_weights(m, train_sl, bias, global_name)
        w_val = method_weights(m, val_sl, bias, global_name) if val_sl is not None else None
        set_seed(cfg.seed)
        features = run.feature_cache  # frozen mode only; a global init copies the global head
        model = (
            load(layout.global_model, feature_cache=features)
            if init == "global"
            else build_model(cfg.model, geometry, feature_cache=features)
        )
        if list(model.geometry.labels) != list(geometry.labels):
            raise ValueError(f"{layout.global_model}: labels {model.labels} differ from the task's {geometry.labels}")
        if bool(getattr(model, "frozen", False)) != cfg.model.frozen:
            raise ValueError(
                f"{layout.global_model}: the global model was trained with a "
                f"{'frozen' if getattr(model, 'frozen', False) else 'fine-tuned'} encoder but model.encoder_mode is "
                f"{cfg.model.encoder_mode}; retrain it (knot train --role global) or set distill.init: scratch"
            )
        model.to(device)
        cache = layout.token_cache
        train_ds = make_dataset(
            model, train_texts, torch.from_numpy(np.asarray(train_sl.probs, dtype=np.float32)), cache_dir=cache,
            name=f"{transfer.name}-train"
        )
        train_loader = make_loader(
            train_ds, train_cfg.batch_size, shuffle=True, group_by_length=train_cfg.group_by_length, seed=cfg.seed
        )
        val_loader = None
        if val_sl is not None:
            val_ds = make_dataset(
                model, val_texts, torch.from_numpy(np.asarray(val_sl.probs, dtype=np.float32)), cache_dir=cache,
                name=f"{transfer.name}-val"
            )
            val_loader = make_loader(val_ds, train_cfg.eval_batch_size, shuffle=False, group_by_length=True)
        if (parse_learned_spec(m.geometry) or {}).get("from") == "head" and init != "global":
            raise ValueError(
                f"distill method {m.name!r}: geometry learned: head reads the global model's output layer, "
                "but the student starts from scratch; set init: global"
            )
        # the loss's geometry (a learned one from the start model, before training); model,
        # evaluation and SD keep the task's
        loss_geo = loss_geometry(m, geometry, learned_inputs(m, train_sl, model, global_name))
        layout.student(m.name).mkdir(parents=True, exist_ok=True)
        _save_loss_geometry(m, loss_geo, cfg.task.geometry, layout.student(m.name))
        schedule = lambda_of_epoch(m)
        lam_now = {"lam": None}
        on_epoch = None
        if schedule is not None:
            lam_now["lam"] = schedule(0, train_cfg.epochs)

            def on_epoch(epoch: int, epochs: int) -> dict:
                lam_now["lam"] = schedule(epoch, epochs)
                return {"lam": lam_now["lam"]}

        loss_fn = make_loss_fn(m, loss_geo, w_train, lam=(lambda: lam_now["lam"]) if schedule is not None else None)
        # the val set's own weights; a schedule is scored at the last epoch's lam
        val_loss_fn = make_loss_fn(
            m, loss_geo, w_val if w_val is not None else w_train,
            lam=schedule(train_cfg.epochs - 1, train_cfg.epochs) if schedule is not None else None,
        )
        model.to(device)
        log.info(
            "distilling student %s (%s, %s, %s weights) from %s on %s: %d train / %d val texts, init %s",
            m.name, m.loss, m.aggregate, m.weights, ", ".join(teachers), transfer.name,
            len(train_texts), len(val_texts), init,
        )
        result = fit(
            model,
            loss_fn,
            train_loader,
            val_loader,
            train_cfg,
            out_dir=layout.student(m.name),
            select_by=cfg.distill.select_by,
            device=device,
            seed=cfg.seed,
            resume=resume,
            eval_fn=consensus_eval_fn(w_val if w_val is not None else w_train),
            on_epoch=on_epoch,
            val_loss_fn=val_loss_fn,
            evaluate_initial=True,  # initial_val: where the student started
            keep_initial=cfg.distill.keep_initial,
            metadata={
                "role": "student",
                "name": m.name,
                "method": m.to_dict(),
                "init": init,
                "teachers": teachers,
                "transfer_domain": transfer.name,
                "soft_labels_sha256": soft_hashes,
                "val_reference": "teacher_consensus",
                "n_train": len(train_texts),
                "n_val": len(val_texts),
                "model": cfg.model.to_dict(),
                "task": cfg.task.to_dict(),
                "experiment": cfg.name,
                **({"loss_geometry": loss_geo.to_dict()} if loss_geo.origin is not None else {}),
            },
        )
        initial = result.initial_metrics
        summary = {
            "checkpoint": str(result.best_dir),
            "method": m.to_dict(),
            "init": init,
            "n_train": len(train_texts),
            "n_val": len(val_texts),
            "initial_val": initial,
            **result.to_dict(),  # best epoch 0: the initial weights were kept (distill.keep_initial)
        }
        out["students"][m.name] = summary
        best = summary["best_metrics"]
        log.info(
            "student %s: val loss %s -> %s (best epoch %d)",
            m.name,
            _fmt(initial.get("loss")),
            _fmt(best.get("loss")),
            summary["best_epoch"],
        )
        del model
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"
