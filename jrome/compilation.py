"""Counting XLA compilations. Every new shape (or static argument) of a jitted function is a new program, which
costs tens of seconds for a large model on a TPU; this is how jrome's tests, benchmarks and users check that work
of one shape bucket reuses one program.

    with jrome.compilation.CompileLog() as log:
        jrome.trace(lm, prompt, subject)
    print(len(log), log.counts())  # programs compiled, by name
"""

from __future__ import annotations

import collections
import logging
import re
from typing import Any

import jax

_COMPILING = re.compile(r"Compiling (\S+) with global shapes")


class CompileLog(logging.Handler):
    """Records the name of every program JAX lowers and compiles while the context is open (JAX's own compile
    log, `jax_log_compiles`, read instead of printed). A program found in JAX's in-memory cache is not compiled
    and not counted; one read from the persistent compilation cache on disk still is."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.programs: list[str] = []
        self._was: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        found = _COMPILING.match(record.getMessage())
        if found:
            self.programs.append(found.group(1))

    def __enter__(self) -> CompileLog:
        self._was = jax.config.jax_log_compiles
        jax.config.update("jax_log_compiles", True)
        logging.getLogger("jax").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("jax").removeHandler(self)
        jax.config.update("jax_log_compiles", self._was)

    def __len__(self) -> int:
        return len(self.programs)

    def counts(self) -> dict[str, int]:
        """Programs compiled, by name (e.g. "jit(restoration_probs)"), most first."""
        return dict(collections.Counter(self.programs).most_common())
