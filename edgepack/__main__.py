"""``python -m edgepack``: the same as the ``edgepack`` command."""

import sys

from edgepack.cli import main

sys.exit(main())
