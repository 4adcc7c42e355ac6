"""python -m runtime: the same as python -m runtime.classify."""

import sys

from runtime.classify import main

sys.exit(main())
