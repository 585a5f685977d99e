"""`python -m lfm2_mlx ...` is `lfm2-audio ...`."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
