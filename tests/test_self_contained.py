"""The repository speaks for itself: every file its documents point at is in it, and every
measured figure names the hardware it ran on ("2-core AMD EPYC VM"), not a place the reader
cannot see."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Markdown link targets, and bare relative paths such as ../results/bench/cpu.md.
LINK = re.compile(r"\]\(([^)\s]+)\)|(?<![\w./])(\.\./[\w./-]+)")
# Words that stand in for the hardware instead of naming it.
UNNAMED_HARDWARE = ("this machine", "this task")


def tracked(suffix: str) -> list[Path]:
  names = subprocess.run(["git", "ls-files", f"*{suffix}"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
  return [ROOT / name for name in names]


def missing_targets(document: Path, text: str) -> list[str]:
  """The relative paths ``text`` (the contents of ``document``) names that are not files or
  folders of the repository."""
  missing = []
  for match in LINK.finditer(text):
    target = (match.group(1) or match.group(2)).split("#")[0]
    if not target or re.match(r"[a-z]+:", target):  # an anchor, or a URL
      continue
    path = (document.parent / target).resolve()
    if ROOT not in path.parents or not path.exists():
      missing.append(f"{document.relative_to(ROOT)}: {target}")
  return missing


def test_every_path_a_document_names_is_in_the_repository():
  missing = [m for doc in tracked(".md") for m in missing_targets(doc, doc.read_text("utf-8"))]
  assert not missing, "\n".join(missing)


def test_the_check_catches_a_path_outside_or_missing():
  document = ROOT / "docs" / "page.md"
  text = ("[ok](../README.md) [gone](missing.md) [web](https://example.org) [here](#top)\n"
          "see ../../elsewhere/notes.md and ../results/bench/cpu.md\n")
  assert missing_targets(document, text) == ["docs/page.md: missing.md",
                                             "docs/page.md: ../../elsewhere/notes.md"]


def test_figures_name_their_hardware():
  hits = []
  for path in tracked(""):
    if path == Path(__file__) or path.relative_to(ROOT).parts[0] == "results":
      continue
    try:
      text = path.read_text(encoding="utf-8").lower()
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
      continue
    hits += [f"{path.relative_to(ROOT)}: {phrase!r}" for phrase in UNNAMED_HARDWARE
             if phrase in text]
  assert not hits, "\n".join(hits)
