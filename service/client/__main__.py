"""``python -m service.client``."""

import sys

from service.client.cli import main

sys.exit(main())
