"""``python -m resultstore.cli``: the same command line as the ``resultstore`` script."""

from __future__ import annotations

import sys

from resultstore.cli import main

if __name__ == "__main__":
    sys.exit(main())
