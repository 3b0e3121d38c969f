"""structlog set-up: JSON lines for services, readable console lines for the CLI."""

from __future__ import annotations

import logging
import sys

import structlog


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write.

    Binding the stream object at configuration time breaks the moment it is swapped and closed
    (pytest's capture, an embedding application redirecting stderr): every later log line then
    raises ``ValueError: I/O operation on closed file`` inside the code that logged it.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_STDERR = _CurrentStderr()
#: Marks the root handler ``configure_logging`` installs (replaced when called again).
_HANDLER_MARK = "_evalfleet_handler"


def configure_logging(*, json: bool = True, level: str = "INFO") -> None:
    """Route structlog and the standard library's logging to stderr in one format.

    Services log one JSON object per line; the CLI uses the console renderer. Records of the
    standard library's loggers (grpc, datasets, transformers, ...) go through the same renderer,
    with their logger's name, so a process never mixes two formats.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared = [structlog.processors.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_STDERR),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    if not root.handlers:  # an embedding application's (or pytest's) handlers are kept
        root.addHandler(handler)
        root.setLevel(max(numeric, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger bound to a component name."""
    return structlog.get_logger(component=name)
