#!/usr/bin/env python
"""Entry point: `python run_eval.py --help`. All logic lives in evalharness.cli."""
import sys

from evalharness.cli import main

if __name__ == "__main__":
    sys.exit(main())
