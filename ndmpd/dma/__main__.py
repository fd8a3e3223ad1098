"""``python -m ndmpd.dma``: the ``ndmp`` command."""

import sys

from .cli import main

sys.exit(main())
