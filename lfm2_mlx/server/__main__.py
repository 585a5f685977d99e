"""`python -m lfm2_mlx.server ...` is `lfm2-audio serve ...`."""

import sys

from .cli import run

if __name__ == "__main__":
    sys.exit(run())
