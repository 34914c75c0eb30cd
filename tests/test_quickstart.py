"""The README's quick start runs and trains."""

from examples import quickstart


def test_quickstart_trains():
  assert quickstart.train(100) < 0.5
