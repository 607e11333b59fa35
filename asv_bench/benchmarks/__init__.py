"""flowdb asv benchmarks.

asv imports this package with its own working directory and environment, so
a flowdb that is only built in place in this checkout (not installed in the
Python running `asv run --python=same`) would not be found; in that case,
and only then, the checkout is put on sys.path.
"""
import os
import sys

try:
    import flowdb  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
