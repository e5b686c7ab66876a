"""The ``kubectl-cpls`` command line: flags as kubectl has them, one sub-command per daily task."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from cvm_prelaunch_operator import __version__
from cvm_prelaunch_operator.domain.chain import hex32
from cvm_prelaunch_operator.domain.config import parse_duration
from cvm_prelaunch_operator.plugin import commands
from cvm_prelaunch_operator.plugin.cluster import PluginError, Resources, connect

DEFAULT_REQUEST_TIMEOUT = 30.0
MAX_REQUEST_TIMEOUT = 600.0
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

DESCRIPTION = """\
Day-to-day work on CvmPreLaunchScripts (cloud.phala.com), with your kubeconfig, context and
namespace as kubectl uses them.

exit codes: 0 done; 1 refused or failed, nothing changed; 2 usage error.
diff: 0 no difference, 1 the scripts differ, 2 trouble (as diff(1))."""

EPILOG = """\
examples:
  kubectl cpls status -A
  kubectl cpls status web -n apps
  kubectl cpls approve web -n apps --hash 0x4537...e034
  kubectl cpls diff web -n apps
  kubectl cpls refresh web -n apps
  kubectl cpls suspend web -n apps && kubectl cpls resume web -n apps"""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on the given stream (exit 2 stays argparse's)."""

    stderr: TextIO = sys.stderr

    def error(self, message: str) -> NoReturn:
        self.print_usage(self.stderr)
        self.exit(commands.USAGE, f"{self.prog}: error: {message}\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self.stderr.write(message)
        raise SystemExit(status)


def _resource_name(text: str) -> str:
    if len(text) > 253 or not _NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a resource name")
    return text


def _compose_hash(text: str) -> str:
    try:
        hex32(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be 0x followed by 64 hex digits") from None
    return text


def _timeout(text: str) -> float:
    try:
        seconds = float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not 0 < seconds <= MAX_REQUEST_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_REQUEST_TIMEOUT:.0f}s")
    return seconds


def _add_connection_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Defined at the top and on every verb, so they may come before or after it (kubectl passes
    # `kubectl cpls -n x approve y` as `-n x approve y`). On verbs they default to SUPPRESS, so an
    # absent flag does not overwrite one given before the verb.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "-n", "--namespace", default=default(None), help="namespace (default: the context's, else default)"
    )
    parser.add_argument("--context", default=default(None), help="kubeconfig context (default: current)")
    parser.add_argument(
        "--kubeconfig", default=default(None), help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)"
    )
    parser.add_argument(
        "--request-timeout",
        type=_timeout,
        default=default(DEFAULT_REQUEST_TIMEOUT),
        metavar="DURATION",
        help=f"longest wait for one API request, e.g. 10s (default: {DEFAULT_REQUEST_TIMEOUT:.0f}s)",
    )


def build_parser(stderr: TextIO = sys.stderr) -> argparse.ArgumentParser:
    _Parser.stderr = stderr
    parser = _Parser(
        prog="kubectl cpls",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kubectl-cpls {__version__}")
    _add_connection_flags(parser, top=True)
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True, parser_class=_Parser)

    def verb(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            help=summary,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_connection_flags(sub, top=False)
        return sub

    approve = verb(
        "approve",
        "approve the compose hash a resource waits for",
        "Set the annotation cloud.phala.com/approved-compose-hash to the compose hash in\n"
        "status.pendingApproval, so the operator registers it on the app contract.\n\n"
        "exit 0: approved (or approved already); 1: nothing pending, the pending hash is not --hash,\n"
        "or the resource changed meanwhile: nothing was changed; 2: usage error.",
    )
    approve.add_argument("name", type=_resource_name, metavar="NAME")
    approve.add_argument(
        "--hash",
        type=_compose_hash,
        metavar="HASH",
        help="approve only if this is the pending compose hash (recommended: the hash you checked)",
    )

    status = verb(
        "status",
        "show ready, reason, phase, pending approval and last failure",
        "A table of CvmPreLaunchScripts. With NAME, also the pending approval and the last failure in full.",
    )
    status.add_argument("name", type=_resource_name, nargs="?", metavar="NAME")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="resources of every namespace")

    diff = verb(
        "diff",
        "diff the desired script with the one the CVM runs",
        "Unified diff between the script the CVM runs (---, read from Phala Cloud with the API key of\n"
        "the resource's Secret) and the desired one (+++, the ConfigMap key).\n\n"
        "exit 0: the same; 1: they differ; 2: trouble. The API key is never printed.",
    )
    diff.add_argument("name", type=_resource_name, metavar="NAME")
    diff.add_argument(
        "--api-url",
        help="Phala Cloud API base URL (default: PHALA_CLOUD_API_URL, else https://cloud-api.phala.com/api/v1)",
    )

    for name, summary, description in (
        (
            "refresh",
            "ask for an immediate re-sync",
            "Set the annotation cloud.phala.com/requested-at to now (RFC 3339); the operator re-syncs.",
        ),
        ("suspend", "stop all remote calls for a resource", "Set spec.suspend to true."),
        ("resume", "let the operator work on a resource again", "Set spec.suspend to false."),
    ):
        verb(name, summary, description).add_argument("name", type=_resource_name, metavar="NAME")
    return parser


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser(err)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else commands.USAGE
    if args.verb == "status" and args.name is not None and args.all_namespaces:
        parser.print_usage(err)
        err.write("kubectl cpls: error: a NAME cannot be combined with --all-namespaces\n")
        return commands.USAGE
    failure_code = commands.DIFF_TROUBLE if args.verb == "diff" else commands.FAILED
    try:
        return _run(args, out, err)
    except PluginError as error:
        err.write(f"error: {error}\n")
        return commands.REFUSED if isinstance(error, commands.Refused) else failure_code
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Settings first: a bad PHALA_CLOUD_API_URL is reported before anything is read from the cluster.
    settings = commands.phala_settings(args.api_url) if args.verb == "diff" else None
    target = connect(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        timeout=args.request_timeout,
    )
    resources = Resources(target)
    namespace_flag = f" -n {target.namespace}"
    handlers: dict[str, Callable[[], int]] = {
        "approve": lambda: commands.approve(resources, args.name, args.hash, out),
        "status": lambda: commands.status(
            resources,
            args.name,
            all_namespaces=args.all_namespaces,
            namespace_flag=namespace_flag,
            out=out,
            err=err,
        ),
        "refresh": lambda: commands.refresh(resources, args.name, out, err),
        "suspend": lambda: commands.set_suspend(resources, args.name, True, out),
        "resume": lambda: commands.set_suspend(resources, args.name, False, out),
    }
    if args.verb == "diff":
        assert settings is not None
        return commands.diff(resources, args.name, settings, out)
    return handlers[args.verb]()
