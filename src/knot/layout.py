"""Where each stage writes inside a run directory.

A run directory holds everything one experiment produces; every stage reads its inputs
from here and writes its outputs here, so stages can run on their own (``knot train``,
``knot distill``, ...) or all together (``knot run``)::

    RUN/
      config.yaml            resolved config (what actually ran)
      stages.json            per-stage input hashes (resume / skip)
      data/                  prepared splits: <domain>/{train,val,test}.jsonl, manifest.json
      teachers/<domain>/     local teacher checkpoints
      global/                global model checkpoint
      soft_labels/           soft labels (transfer train/val) and bias.json
      cache/tokens/          tokenised splits (reused across stages)
      features/              frozen-encoder feature cache (model.encoder_mode: frozen;
                             $KNOT_CACHE replaces it, see knot.features.cache_root)
      federated/             status.json, round-<n>.json, clients/ (federated runs)
      students/<method>/     student checkpoints
      predictions/<model>.npz per-item predicted distributions of every evaluated model
      results.json results.md report.md plots/
      .lock                  held by the command writing here (knot.locking.run_lock)

With ``seeds: [...]`` the run directory holds one such folder per seed, ``seed-<s>/``,
beside the aggregated report.md and plots/ and the shared ``features/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunLayout"]


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory ``root``. ``features_dir`` replaces ``root/features``
    (the runs of a multi-seed experiment share ``OUT/features``: same texts, one encoding)."""

    root: Path
    features_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.features_dir is not None:
            object.__setattr__(self, "features_dir", Path(self.features_dir))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def manifest(self) -> Path:
        return self.data / "manifest.json"

    def teacher(self, domain: str) -> Path:
        return self.root / "teachers" / domain

    @property
    def global_model(self) -> Path:
        return self.root / "global"

    @property
    def soft_labels(self) -> Path:
        return self.root / "soft_labels"

    @property
    def bias(self) -> Path:
        return self.soft_labels / "bias.json"

    @property
    def token_cache(self) -> Path:
        return self.root / "cache" / "tokens"

    @property
    def features(self) -> Path:
        """Default feature-cache folder of frozen-encoder runs (``$KNOT_CACHE`` wins:
        use :func:`knot.features.cache_root` on it)."""
        return self.features_dir if self.features_dir is not None else self.root / "features"

    @property
    def federated(self) -> Path:
        return self.root / "federated"

    @property
    def federated_status(self) -> Path:
        return self.federated / "status.json"

    def federated_round(self, round: int) -> Path:
        return self.federated / f"round-{round}.json"

    def student(self, method: str) -> Path:
        return self.root / "students" / method

    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    def predictions(self, model_id: str) -> Path:
        """``predictions/<model>.npz`` of a model id (``student:ot`` -> ``student-ot.npz``)."""
        return self.root / "predictions" / f"{model_id.replace(':', '-')}.npz"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def seed_run(self, seed: int) -> "RunLayout":
        """One seed's run of a multi-seed experiment: ``ROOT/seed-<s>``, sharing the
        experiment's feature cache (same texts, one encoding)."""
        return RunLayout(self.root / f"seed-{seed}", features_dir=self.features)

    def seed_runs(self) -> list["RunLayout"]:
        """The seed runs present in ``ROOT`` (``seed-<s>`` folders), in seed order."""
        seeds = sorted(
            int(p.name[len("seed-"):]) for p in self.root.glob("seed-*")
            if p.is_dir() and p.name[len("seed-"):].lstrip("-").isdigit()
        )
        return [self.seed_run(s) for s in seeds]
