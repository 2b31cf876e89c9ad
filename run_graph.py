#!/usr/bin/env python3
"""Run a lipgraph graph from a source checkout: the same as the installed `lipgraph` command."""
import sys

from lipgraph.cli import main

if __name__ == "__main__":
    sys.exit(main())
