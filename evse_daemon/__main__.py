"""``python -m evse_daemon``: the same as the ``evse-daemon`` command."""

import sys

from .cli import main

sys.exit(main())
