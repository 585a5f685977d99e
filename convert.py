"""Convert a Hugging Face LFM2-Audio checkpoint to an MLX folder (same as `lfm2-audio convert`).

python convert.py LiquidAI/LFM2.5-Audio-1.5B -o lfm25-mlx --dtype bfloat16 [-q --q-bits 4]
python convert.py --hf-path LiquidAI/LFM2.5-Audio-1.5B --mlx-path lfm25-mlx    # mlx-lm's spelling
"""

import sys

from lfm2_mlx.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
