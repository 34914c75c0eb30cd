"""The docs site's sources and its Sphinx extensions (``make docs``)."""
