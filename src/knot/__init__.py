"""knot: multi-teacher knowledge distillation with optimal transport over label geometry.

Importing ``knot`` is cheap: submodules (``knot.ot``, ``knot.losses``, ...) are imported
on demand, and the optional federated layer (``knot.federated``) is never imported here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
