"""``kubectl cpls``: the kubectl plugin for the day-to-day work on CvmPreLaunchScripts.

A client tool, run by people with their own kubeconfig: approve the compose hash a resource waits
for, see where every resource stands, compare the desired script with the one a CVM runs, and ask
for a refresh, a suspension or a resumption. It is installed as the console script ``kubectl-cpls``
with the operator's package, so kubectl finds it on PATH as ``kubectl cpls``.
"""

from cvm_prelaunch_operator.plugin.cli import main

__all__ = ["main"]
