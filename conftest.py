"""Doctest collection of the package (``testpaths`` includes ``src/knot``): skip the Flower
adapter modules when the ``flower`` extra is absent. Kept here, beside the package, so the
shipped ``knot`` holds no test configuration."""

from knot.federated import flower_available

_FLOWER_MODULES = ["flower.py", "client_app.py", "server_app.py"]
collect_ignore = [] if flower_available() else [f"src/knot/federated/{m}" for m in _FLOWER_MODULES]
