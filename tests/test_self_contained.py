"""The repository speaks for itself: no file points at notes its users do not have."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("../shared", "design card", "design.md", "design note", "this machine", "this task")


def test_no_file_refers_to_material_outside_the_repository():
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  hits = []
  for name in files:
    if name.startswith("results/") or name == Path(__file__).relative_to(ROOT).as_posix():
      continue
    try:
      text = (ROOT / name).read_text(encoding="utf-8").lower()
    except (UnicodeDecodeError, FileNotFoundError):
      continue
    hits += [f"{name}: {phrase!r}" for phrase in OUTSIDE if phrase in text]
  assert not hits, "\n".join(hits)
