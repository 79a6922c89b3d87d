"""Logging setup: plain text, or JSON lines for log collectors. Every line logged inside a
traced request carries its trace and span ids."""

from __future__ import annotations

import json
import logging
import sys
import time

from pinsvc import tracing


class _TraceIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ids = tracing.trace_ids()
        record.trace_id, record.span_id = ids if ids else ("", "")
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if getattr(record, "trace_id", ""):
            doc["trace_id"], doc["span_id"] = record.trace_id, record.span_id
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{text} trace_id={record.trace_id}" if getattr(record, "trace_id", "") else text


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_TraceIds())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
