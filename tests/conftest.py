"""Fixtures of the local environment are session-scoped and live in the localenv package, so the
shell entry point and the tests start the very same parts."""

pytest_plugins = ["cvm_prelaunch_localenv.pytest_plugin"]
