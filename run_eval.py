#!/usr/bin/env python
"""Entry point: `python run_eval.py --help`. All logic lives in evalharness.cli."""
import sys

try:
    from evalharness.cli import main
except KeyboardInterrupt:  # Ctrl-C while the package imports: one line, like any other moment
    print("interrupted.", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
