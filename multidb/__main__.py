"""``python -m multidb``: the same program as the ``multidb`` command."""

import sys

from .cli import main

sys.exit(main())
