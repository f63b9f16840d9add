"""One JSON line per request. Prompts and outputs appear only with `log_content: true`."""

from __future__ import annotations

import json
import logging
import sys

from gateway.observability.record import RequestRecord


class AccessLog:
    def __init__(self, destination: str | None, log_content: bool) -> None:
        self.log_content = log_content
        # A logger of our own, not registered with logging's global manager.
        self._logger = logging.Logger("gateway.access", logging.INFO)
        if destination is None or destination.lower() in ("off", "none", ""):
            self._logger.disabled = True
            return
        handler: logging.Handler
        if destination == "stderr":
            handler = logging.StreamHandler(sys.stderr)
        else:
            handler = logging.FileHandler(destination, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(handler)

    def write(self, record: RequestRecord) -> None:
        if self._logger.disabled:
            return
        line = record.summary()
        if self.log_content:
            line["messages"] = record.messages
            line["output"] = "".join(record.output) if record.output is not None else None
        self._logger.info(json.dumps(line, ensure_ascii=False))

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)
