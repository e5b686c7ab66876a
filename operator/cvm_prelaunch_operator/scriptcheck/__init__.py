"""The script gate: checks a pre-launch script before any upload (``reconcile.ports.ScriptChecker``)."""

from cvm_prelaunch_operator.scriptcheck.checker import ShellScriptChecker
from cvm_prelaunch_operator.scriptcheck.content import MAX_SCRIPT_BYTES

__all__ = ["MAX_SCRIPT_BYTES", "ShellScriptChecker"]
