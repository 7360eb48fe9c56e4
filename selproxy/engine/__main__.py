"""``python -m selproxy.engine`` runs the same code as ``selproxy engine``."""
import sys

from .cli import main

sys.exit(main())
