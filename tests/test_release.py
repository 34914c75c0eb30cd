"""The release records agree: ``layerwise_optax.__version__``, the CHANGELOG's latest release
and CITATION.cff name the same version and date, and the CHANGELOG lists its releases newest
first under an ``Unreleased`` heading (Keep a Changelog)."""

import datetime
import re
from pathlib import Path

import pytest

import layerwise_optax

ROOT = Path(__file__).resolve().parents[1]
RELEASE = re.compile(r"^## \[(\d+)\.(\d+)\.(\d+)\] - (\d{4}-\d{2}-\d{2})$")


def changelog_headings(text: str) -> list[str]:
  """The ``## `` (version) headings of a Keep a Changelog file, in order."""
  return [line for line in text.splitlines() if line.startswith("## ")]


def releases(headings: list[str]) -> list[tuple[tuple[int, int, int], datetime.date]]:
  """(version, date) of each release heading ``## [X.Y.Z] - YYYY-MM-DD``; raises on others."""
  out = []
  for heading in headings:
    match = RELEASE.match(heading)
    if match is None:
      raise ValueError(f"not a release heading: {heading!r}")
    major, minor, patch, date = match.groups()
    out.append(((int(major), int(minor), int(patch)), datetime.date.fromisoformat(date)))
  return out


def citation_field(text: str, key: str) -> str:
  """A top-level scalar of CITATION.cff (``key: value``, quotes removed)."""
  (value,) = re.findall(rf"^{re.escape(key)}:\s*(.+?)\s*$", text, flags=re.MULTILINE)
  return value.strip("\"'")


def test_the_parsers_read_what_they_should():
  headings = changelog_headings("# Changelog\n\n## [Unreleased]\n\n### Added\n\n"
                                "## [1.10.0] - 2026-01-02\n## [1.9.3] - 2025-12-31\n")
  assert headings == ["## [Unreleased]", "## [1.10.0] - 2026-01-02", "## [1.9.3] - 2025-12-31"]
  assert releases(headings[1:]) == [((1, 10, 0), datetime.date(2026, 1, 2)),
                                    ((1, 9, 3), datetime.date(2025, 12, 31))]
  with pytest.raises(ValueError, match="not a release heading"):
    releases(["## 1.0.0 - 2026-01-02"])
  cff = 'cff-version: 1.2.0\nversion: 0.3.1\ndate-released: "2026-01-02"\n  version: 9\n'
  assert citation_field(cff, "version") == "0.3.1"
  assert citation_field(cff, "date-released") == "2026-01-02"


def test_version_changelog_and_citation_agree():
  headings = changelog_headings((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"))
  assert headings[0] == "## [Unreleased]", headings[:2]
  history = releases(headings[1:])
  (version, date), *_ = history
  released = ".".join(map(str, version))
  assert layerwise_optax.__version__ == released
  citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
  assert citation_field(citation, "cff-version") == "1.2.0"
  assert citation_field(citation, "version") == released
  assert citation_field(citation, "date-released") == date.isoformat()
  # Newest first, each release later than the one before it.
  assert [v for v, _ in history] == sorted({v for v, _ in history}, reverse=True)
  assert [d for _, d in history] == sorted({d for _, d in history}, reverse=True)


def test_citation_prefers_the_paper():
  citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
  preferred = citation[citation.index("\npreferred-citation:"):]
  assert "Layer-Specific Adaptive Learning Rates for Deep Networks" in preferred
  assert re.findall(r"family-names: (\S+)", preferred) == [
      "Singh", "De", "Zhang", "Goldstein", "Taylor"]
  assert "10.1109/ICMLA.2015.113" in preferred and "1510.04609" in preferred
  assert re.search(r"^  year: 2015$", preferred, flags=re.MULTILINE)
