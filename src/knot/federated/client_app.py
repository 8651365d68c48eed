"""The ClientApp that ``flwr run`` loads on each SuperNode: ``knot.federated.client_app:app``.

Settings come from the SuperNode's node config (``domain``, ``data-root``, ``work-dir``;
see :func:`knot.federated.flower.make_client_app`). Needs the ``flower`` extra.
"""

from knot.federated.flower import make_client_app

app = make_client_app()
