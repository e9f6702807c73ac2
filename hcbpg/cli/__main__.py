"""``python -m hcbpg.cli``: the same command line as ``hcbpg``."""

import sys

from hcbpg.cli import main

sys.exit(main())
