"""Sphinx extension: the build fails when a public name of the package is not documented.

Every name in ``layerwise_optax.__all__`` must have a docstring and an entry written by
autodoc (``.. autofunction::``, ``.. autoclass::``) on some page. The check runs after all
pages are read; it logs one error per missing name and sets the exit status to 1, so it
fails the build with or without ``-W``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable

PACKAGE = "layerwise_optax"


def missing_names(module: object, documented: Iterable[str]) -> list[str]:
  """The names in ``module.__all__`` without a docstring or without a documented entry.

  Args:
    module: a module (or any object) with ``__name__`` and ``__all__``.
    documented: the full names that the docs describe, e.g. ``"layerwise_optax.sgd"``.

  Returns:
    The public names, in ``__all__`` order, that are undocumented.
  """
  documented = set(documented)
  return [name for name in module.__all__
          if f"{module.__name__}.{name}" not in documented
          or not inspect.getdoc(getattr(module, name, None))]


def _check(app, env) -> None:
  from sphinx.util import logging  # here, so that tests import this module without Sphinx

  logger = logging.getLogger(__name__)
  documented = env.get_domain("py").objects
  module = app.config.public_api_module
  for name in missing_names(importlib.import_module(module), documented):
    logger.error(f"{module}.{name} is public (in __all__) but has no docstring or no "
                 "autodoc entry: document it in docs/api.md.")
    app.statuscode = 1


def setup(app):
  app.add_config_value("public_api_module", PACKAGE, "env")
  app.connect("env-check-consistency", _check)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
