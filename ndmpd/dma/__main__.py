"""``python -m ndmpd.dma``: the ``ndmp`` command."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:            # Ctrl-C while starting up: the status of an interrupted job
    sys.exit(130)

sys.exit(main())
