"""knot: multi-teacher knowledge distillation with optimal transport over label geometry.

Importing ``knot`` is cheap: submodules (``knot.ot``, ``knot.losses``, ...) and the
top-level names below are imported on first use (torch only then), and the optional
federated layer (``knot.federated``) is never imported here.

Top-level names: :class:`knot.Run` (a whole experiment over one run folder, the stages as
methods), :func:`knot.load` (a predictor for any knot model folder),
:class:`knot.LabelGeometry`, :func:`knot.ot_cost`, :func:`knot.distillation_loss`,
:func:`knot.evaluate_probs`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: top-level name -> the module that defines it (imported on first access)
_LAZY = {
    "Run": "knot.pipeline",
    "load": "knot.api",
    "LabelGeometry": "knot.geometry",
    "ot_cost": "knot.ot",
    "distillation_loss": "knot.losses",
    "evaluate_probs": "knot.metrics",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module 'knot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
