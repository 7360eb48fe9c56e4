# The one version string; setup.py and the package read it from here.
__version__ = "0.1.0.dev0"
