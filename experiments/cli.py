"""Command-line conventions shared by every command of the repository.

Bad input ends a command with one line on stderr that names the problem and what to do,
and a non-zero exit status: 2 for a usage error (an unknown option value, a count below 1),
1 for a problem found while running (a corrupt data file, a failed download, a checkpoint
of another configuration). :class:`InputError` is the exception for the second kind;
:func:`reports_errors` turns it into that line, and :class:`Parser` prints usage errors as
one line instead of argparse's usage block.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path


class InputError(ValueError):
  """A problem with the files or options a command was given, fixable by its user."""


class Parser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose usage errors are one line and exit status 2."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def reports_errors(main):
  """Wraps a command's ``main``: an :class:`InputError` becomes one stderr line, exit 1."""
  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
  return wrapper


def positive_int(text: str) -> int:
  """argparse type: an integer of at least 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} must be at least 1")
  return value


def positive_ints(text: str) -> tuple[int, ...]:
  """argparse type: comma-separated integers of at least 1, e.g. ``64,20``."""
  return tuple(positive_int(part) for part in text.split(","))


def floats(text: str) -> list[float]:
  """argparse type: comma-separated numbers, e.g. ``0.01,0.1``."""
  try:
    return [float(part) for part in text.split(",") if part]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                     "numbers") from None


def writable_folder(path: str | Path) -> Path:
  """Creates ``path`` if needed and checks a file can be written there."""
  path = Path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise InputError(f"cannot write to {path} ({e.strerror}); pass another --out") from None
  return path
