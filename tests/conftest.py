import os
import sys

# Tests import their helpers as ``support.*``; the package under test is the
# installed one (pytest runs with --import-mode=importlib, so the source tree
# is not put on sys.path).
sys.path.insert(0, os.path.dirname(__file__))
