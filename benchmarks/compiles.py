"""Compile accounting: tracing, lowering and XLA compile events, from ``jax.monitoring``.

The listener is registered on the first :func:`compile_log`, not at import.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax

_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                   "/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration")
_events: list[tuple[str, float]] = []
_registered = False


def _listener(event: str, duration: float, **_: Any) -> None:
  if event in _COMPILE_EVENTS:
    _events.append((event, duration))


@contextlib.contextmanager
def compile_log():
  """Collects (event, seconds) of tracing, lowering and XLA compiles inside the block."""
  global _registered
  if not _registered:  # JAX keeps listeners for the life of the process: register once
    jax.monitoring.register_event_duration_secs_listener(_listener)
    _registered = True
  start = len(_events)
  out: list[tuple[str, float]] = []
  yield out
  out.extend(_events[start:])


def n_compiles(log: list[tuple[str, float]]) -> int:
  return sum(e == _COMPILE_EVENTS[0] for e, _ in log)

