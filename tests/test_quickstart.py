"""The README's quick start runs and trains."""

import importlib.util
import pathlib


def test_quickstart_trains():
  path = pathlib.Path(__file__).parents[1] / "examples" / "quickstart.py"
  spec = importlib.util.spec_from_file_location("quickstart", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.main(steps=100) < 0.5
