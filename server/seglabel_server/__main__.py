"""``python -m seglabel_server``: the same as ``seglabel-server``."""

import sys

from seglabel_server.transport.server import main

sys.exit(main())
