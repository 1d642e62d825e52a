import sys

from seglabel_client.cli import main

sys.exit(main())
