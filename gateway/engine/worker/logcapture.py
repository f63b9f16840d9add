"""llama.cpp's log, captured in the worker while it loads and runs a model: `LogCapture` receives it
from a `llama_log_set` callback, which sees every line whatever `verbose` says (llama-cpp-python's own
callback prints only some levels), folds the relevant lines into a `LoadReport` (`loadlog.py`) and
keeps the last error lines, from which `failure_message` says why a load failed.
"""

from __future__ import annotations

import ctypes
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.engine.loadlog import LoadReport, OutOfMemory, parse_lines, parse_oom

_KEEP_ERRORS = 20
# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (llama-cpp-python's own callback
# still maps the older numbering, where 4 was DEBUG, and so drops every error line).
_LEVEL_ERROR = 4


_RELEVANT = ("buffer", "device", "memory", "alloc")


class LogCapture:
    """Receives llama.cpp's log text (in pieces that need not end lines) and keeps what matters:
    the lines `parse_lines` understands, and the last error lines for a failure message."""

    def __init__(self, echo: bool = False) -> None:
        self._echo = echo
        self._partial = ""
        self._report = LoadReport()
        self.errors: deque[str] = deque(maxlen=_KEEP_ERRORS)
        self._callback: Any = None  # the ctypes callback: must outlive llama.cpp's pointer to it
        # Told of every allocation failure as it is logged (after the load: the worker is about to abort).
        self.on_oom: Callable[[OutOfMemory], None] | None = None

    def feed(self, level: int, text: str) -> None:
        if self._echo or level == _LEVEL_ERROR:
            sys.stderr.write(text)
        if level == _LEVEL_ERROR and text.strip():
            self.errors.append(text.strip())
        self._partial += text
        if "\n" not in self._partial:
            return
        *complete, self._partial = self._partial.split("\n")
        # "alloc": cuBLAS's failures ("the resource allocation failed", CUBLAS_STATUS_ALLOC_FAILED) are OOMs too.
        relevant = [line for line in complete if any(w in line.lower() for w in _RELEVANT)]
        relevant += [line for line in complete if "offloaded" in line]
        if relevant:
            self._report = parse_lines(relevant, self._report)
            if self.on_oom is not None:
                for failure in filter(None, map(parse_oom, relevant)):
                    self.on_oom(failure)

    def report(self) -> LoadReport:
        if self._partial:  # a last line without its newline
            self._report = parse_lines([self._partial], self._report)
            self._partial = ""
        return self._report

    def install(self) -> None:
        """Route llama.cpp's (and ggml's) log to this capture, in this process."""
        import llama_cpp

        def callback(level: int, text: bytes | None, user_data: Any) -> None:
            if text:
                self.feed(level, text.decode("utf-8", errors="replace"))

        self._callback = llama_cpp.llama_log_callback(callback)
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        from llama_cpp import mtmd_cpp

        # libmtmd (the vision projector) logs every prompt's chunks to stderr unless told otherwise.
        mtmd_cpp.mtmd_log_set(self._callback, ctypes.c_void_p(0))
        mtmd_cpp.mtmd_helper_log_set(self._callback, ctypes.c_void_p(0))


def failure_message(exc: BaseException, report: LoadReport, errors: list[str]) -> str:
    """Why a load failed, with the allocation that ran out of memory when llama.cpp said so."""
    message = f"{type(exc).__name__}: {exc}"
    if report.oom is not None:
        where = report.oom.device or "a device"
        need = f" allocating {report.oom.need / 2**20:.0f} MiB" if report.oom.need else ""
        return f"{message} (out of memory on {where}{need}: {report.oom.line})"
    if errors:  # the first error is the cause; later ones report that loading stopped
        return f"{message} ({errors[0]})"
    return message
