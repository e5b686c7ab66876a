"""A faithful simulator of the Phala Cloud API (the parts the operator uses), with Phase-2 checks
against a real chain over JSON-RPC, fault injection and a request log.

Run it alone with ``python -m cvm_prelaunch_localenv.simulator --help``; in tests use
:class:`SimulatorServer` or the ``simulator``/``sim`` fixtures.
"""

from cvm_prelaunch_localenv.simulator.app import ADMIN_PREFIX, API_PREFIX, Simulator
from cvm_prelaunch_localenv.simulator.compose import (
    compose_hash,
    compose_hash_of_text,
    serialise_app_compose,
)
from cvm_prelaunch_localenv.simulator.server import (
    AdminClient,
    AdminError,
    LoggedRequest,
    SimCvm,
    SimulatorServer,
    peak_concurrency_of,
)

__all__ = [
    "ADMIN_PREFIX",
    "API_PREFIX",
    "AdminClient",
    "AdminError",
    "LoggedRequest",
    "SimCvm",
    "Simulator",
    "SimulatorServer",
    "compose_hash",
    "compose_hash_of_text",
    "peak_concurrency_of",
    "serialise_app_compose",
]
