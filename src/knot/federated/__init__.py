"""Federated teachers: each local teacher stays with its owner and sends only soft labels.

:mod:`knot.federated.core` is engine-free (request/reply types, the client handler, reply
validation, the server round, an in-process runner) and needs nothing beyond knot itself.
:mod:`knot.federated.flower` and the app modules :mod:`knot.federated.client_app` /
:mod:`knot.federated.server_app` adapt it to Flower and need the ``flower`` extra
(``pip install "knot[flower]"``); importing :mod:`knot.federated` never imports Flower.
"""

from knot.federated.core import (
    PROTOCOL,
    FederatedError,
    InProcessTransport,
    RoundResult,
    TeacherReply,
    TeacherRequest,
    TransferRef,
    handle_request,
    read_status,
    run_in_process,
    run_round,
    run_server,
    validate_reply,
)



def flower_available() -> bool:
    """Whether Flower (the ``flower`` extra) can be imported, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("flwr") is not None
    except (ImportError, ValueError):
        return False


__all__ = [
    "flower_available",
    "PROTOCOL",
    "FederatedError",
    "InProcessTransport",
    "RoundResult",
    "TeacherReply",
    "TeacherRequest",
    "TransferRef",
    "handle_request",
    "read_status",
    "run_in_process",
    "run_round",
    "run_server",
    "validate_reply",
]
