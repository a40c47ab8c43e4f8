"""Structured logging: one line per event, ``key=value`` pairs after the logger name.

Every line passes through :func:`dffs.security.redact.redact_text` on its way
out: URLs lose their passwords and signatures, credential headers their
values, whichever module logged them and however (an error message that quotes
a URL included) — credentials never reach a log.
"""

from __future__ import annotations

import logging
import sys

from dffs.security.redact import redact_text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging(level: int = logging.WARNING) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
