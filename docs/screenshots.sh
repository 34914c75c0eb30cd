#!/usr/bin/env bash
# Screenshots of built docs pages in headless Chromium (Debian's `chromium` package), offline.
# Usage: [WIDTH=1280 HEIGHT=1600] bash docs/screenshots.sh [OUT_DIR] [PAGE ...]
# (pages relative to docs/_build/html; the defaults are the index, API and numerics pages).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/docs}; shift || true
pages=("$@"); [ ${#pages[@]} -gt 0 ] || pages=(index.html api.html numerics.html)
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found: apt-get install chromium" >&2; exit 1; }
[ -f docs/_build/html/index.html ] || { echo "no docs build: run make docs first" >&2; exit 1; }
mkdir -p "$out"
profile=$(mktemp -d); trap 'rm -rf "$profile"' EXIT
for page in "${pages[@]}"; do
  png="$out/$(basename "${page%.html}").png"
  # The virtual time budget lets MathJax typeset before the capture; the dead proxy keeps
  # the page offline, so formulas that render here render without internet.
  "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
    --proxy-server=http://127.0.0.1:9 --hide-scrollbars --virtual-time-budget=5000 \
    --window-size="${WIDTH:-1280},${HEIGHT:-1600}" \
    --screenshot="$png" "file://$PWD/docs/_build/html/$page" 2>/dev/null
  echo "$png"
done
