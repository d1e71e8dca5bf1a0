"""`python -m pyproxy`, the same as the `pyproxy` command."""

import sys

from .cli import main

sys.exit(main())
