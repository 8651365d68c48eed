"""Doctest collection: skip the Flower adapter modules when the ``flower`` extra is absent."""

import importlib.util

collect_ignore = (
    [] if importlib.util.find_spec("flwr") is not None else ["flower.py", "client_app.py", "server_app.py"]
)
