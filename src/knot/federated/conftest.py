"""Doctest collection: skip the Flower adapter modules when the ``flower`` extra is absent."""

from knot.federated import flower_available

collect_ignore = [] if flower_available() else ["flower.py", "client_app.py", "server_app.py"]
