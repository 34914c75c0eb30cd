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
import math
import signal
import sys
import tempfile
import threading
from pathlib import Path


class InputError(ValueError):
  """A problem with the files or options a command was given, fixable by its user."""


class UsageError(InputError):
  """A bad option value found after parsing (e.g. a method no registry has): exit status 2."""


class Parser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose usage errors are one line and exit status 2."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Interrupted(Exception):
  """SIGINT or SIGTERM arrived; the exit status is the shell's 128 + the signal's number."""

  def __init__(self, signum: int):
    super().__init__(f"interrupted by {signal.Signals(signum).name}")
    self.status = 128 + signum


def raise_interrupted(signum: int, frame) -> None:
  del frame
  raise Interrupted(signum)


def handle_signals(signums=(signal.SIGINT, signal.SIGTERM)) -> dict:
  """These signals raise :class:`Interrupted` (e.g. no KeyboardInterrupt traceback, and
  ``finally`` clauses run on SIGTERM too); returns the handlers they had."""
  return {signum: signal.signal(signum, raise_interrupted) for signum in signums}


def reports_errors(main):
  """Wraps a command's ``main``: an :class:`InputError` becomes one stderr line and exit
  status 1; a :class:`UsageError` exits 2 with a line like argparse's (the command, ``error:``,
  the message, ``(see --help)``); SIGINT or SIGTERM ends it with one line (what was recorded
  stays: the same command resumes) and exit status 130 or 143."""
  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    module = sys.modules.get(main.__module__)
    name = getattr(getattr(module, "__spec__", None), "name", main.__module__)  # -m: __main__
    main_thread = threading.current_thread() is threading.main_thread()
    previous = handle_signals() if main_thread else {}
    try:
      return main(*args, **kwargs)
    except UsageError as e:
      print(f"python -m {name}: error: {e} (see --help)", file=sys.stderr)
      sys.exit(2)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    except Interrupted as e:
      print(f"python -m {name}: {e}", file=sys.stderr)
      sys.exit(e.status)
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)
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


def finite_float(text: str, least: float = 0.0, above: bool = True) -> float:
  """argparse type: a finite number above ``least`` (or at least ``least`` with
  ``above=False``)."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not (math.isfinite(value) and (value > least if above else value >= least)):
    bound = f"above {least:g}" if above else f"of at least {least:g}"
    raise argparse.ArgumentTypeError(f"{text} must be a finite number {bound}")
  return value


def positive_float(text: str) -> float:
  """argparse type: a finite number above 0."""
  return finite_float(text)


def nonnegative_float(text: str) -> float:
  """argparse type: a finite number of at least 0."""
  return finite_float(text, above=False)


def floats(text: str) -> list[float]:
  """argparse type: comma-separated numbers, e.g. ``0.01,0.1``."""
  try:
    return [float(part) for part in text.split(",") if part]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                     "numbers") from None


def unwritable(path: str | Path, folder: bool = False) -> str | None:
  """Why no file can be written at ``path`` (atomically: a temporary file beside it, then a
  rename), or in the folder ``path`` (``folder``, creating it); None if it can."""
  path = Path(path)
  if not folder and path.is_dir():
    return "a folder"
  try:
    if folder:
      path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path if folder else path.absolute().parent):
      pass
  except OSError as e:
    return e.strerror or type(e).__name__
  return None


def writable_folder(path: str | Path, option: str = "--out") -> Path:
  """Creates ``path`` if needed and checks a file can be written there (else an
  :class:`InputError` that names ``option``)."""
  if problem := unwritable(path, folder=True):
    raise InputError(f"cannot write to {path} ({problem}); pass another {option}")
  return Path(path)
