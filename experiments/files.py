"""Files written atomically: a reader finds the old content or the new, never part of it.

The content goes to a temporary file in the destination's folder (the same file system),
which then replaces the destination with ``os.replace``, an atomic rename on POSIX and
Windows. A failed write leaves the destination as it was and removes the temporary file.
Every command's JSON, Markdown, CSV and PNG outputs are written through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: str | Path, unique: bool = True) -> Iterator[Path]:
  """Yields a temporary path next to ``path`` to write; when the block ends without an
  exception, that file replaces ``path``.

  The temporary name ends in ``path``'s suffix (``.png``, ``.npz``), so writers that choose
  the format by the suffix (``savefig``, ``np.savez``) write the destination's format. It is
  unique per call, or (``unique`` false, for a file one process rewrites again and again,
  such as a checkpoint) always the same, so that what a killed process left is replaced by
  the next write instead of staying behind.
  """
  path = Path(path)
  token = f".{secrets.token_hex(4)}" if unique else ""
  temporary = path.with_name(f".{path.name}{token}.tmp{path.suffix}")
  try:
    yield temporary
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
  """Writes ``text`` to ``path`` (UTF-8, newlines as given), flushed to disk first."""
  with replacing(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def write_json(path: str | Path, value: Any) -> None:
  """Writes ``value`` as indented JSON (one space per level) and a final newline."""
  write_text(path, json.dumps(value, indent=1) + "\n")
