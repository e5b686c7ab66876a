"""Log output of the operator process: plain text, or one JSON object per line (``LOG_FORMAT=json``).

A JSON line carries ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``message``, then
what the line is about when a reconcile pass is under way (``namespace``, ``name``, ``step``,
``correlation_id``, from ``domain.logcontext``), and ``exception`` with the whole traceback as one
string, so that a collector never splits a traceback into lines of its own.

Secrets are redacted where they are handled (``domain.secrets``): nothing here sees a plain value.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, TextIO

from cvm_prelaunch_operator.domain import logcontext
from cvm_prelaunch_operator.settings import OperatorSettings

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# One line stays within what log collectors take in one piece (Docker and containerd split at 16 KiB).
MESSAGE_LIMIT: Final = 8 * 1024
EXCEPTION_LIMIT: Final = 6 * 1024
_CONTEXT_ATTRIBUTE: Final = "cpls_context"
_CUT: Final = " [truncated]"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_CUT)] + _CUT


class ContextFilter(logging.Filter):
    """Stamps each record with the log context of the task that emitted it.

    Runs in the emitting task, before any handler thread or queue could lose the context variables.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, _CONTEXT_ATTRIBUTE):
            setattr(record, _CONTEXT_ATTRIBUTE, logcontext.current())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _cut(record.getMessage(), MESSAGE_LIMIT),
        }
        context = getattr(record, _CONTEXT_ATTRIBUTE, None)
        if not isinstance(context, dict):
            context = logcontext.current()
        for key, value in context.items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = _cut(self.formatException(record.exc_info), EXCEPTION_LIMIT)
        elif record.exc_text:
            entry["exception"] = _cut(record.exc_text, EXCEPTION_LIMIT)
        if record.stack_info:
            entry["stack"] = _cut(self.formatStack(record.stack_info), EXCEPTION_LIMIT)
        # ensure_ascii: a line is plain ASCII whatever a message quotes (control characters escaped).
        return json.dumps(entry, ensure_ascii=True, default=str)


def configure_logging(settings: OperatorSettings, stream: TextIO | None = None) -> logging.Handler:
    """Install the one handler of the root logger, in the format and at the level of ``settings``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if settings.log_format == "json":
        handler.addFilter(ContextFilter())
        handler.setFormatter(JsonFormatter())
        # What Python would otherwise print to stderr by itself (warnings, an uncaught exception's
        # traceback) goes through the handler too: every line of the output stays one JSON object.
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handler


def _log_uncaught(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, trace)
        return
    logging.getLogger("cvm_prelaunch_operator").critical("uncaught exception", exc_info=(kind, error, trace))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("cvm_prelaunch_operator").critical(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )


__all__ = ["ContextFilter", "JsonFormatter", "configure_logging"]
