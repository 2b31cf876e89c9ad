"""Built-in graph files (``graphs/NAME.yaml``), shipped as package data."""
