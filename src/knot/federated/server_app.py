"""The ServerApp that ``flwr run`` loads on the SuperLink: ``knot.federated.server_app:app``.

Settings come from the run config (``config``: the experiment's YAML text or a path to
it, ``out``: the run directory, ``data-root``; see :func:`knot.federated.flower.make_server_app`).
Needs the ``flower`` extra.
"""

from knot.federated.flower import make_server_app

app = make_server_app()
