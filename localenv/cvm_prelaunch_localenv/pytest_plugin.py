"""pytest fixtures of the local environment; each part's fixtures live in ``fixtures/<part>.py``."""

pytest_plugins = [
    "cvm_prelaunch_localenv.fixtures.kube",
    "cvm_prelaunch_localenv.fixtures.chain",
    "cvm_prelaunch_localenv.fixtures.simulator",
    "cvm_prelaunch_localenv.fixtures.operator",
]
