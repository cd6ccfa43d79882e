"""The per-process training entry point, as users launch it:

    accelerate launch vlsft/train.py --config recipes/qwen3vl.yaml [--key value ...]
    python -m vlsft.train --config recipes/qwen3vl.yaml

It trains the recipe in every process the launcher started. `vlsft train --config ...` (`vlsft.cli.train`) is the
same run, and starts `accelerate launch` itself when the recipe's layout wants several processes or DeepSpeed.
The builders live in `vlsft.recipes.build`.
"""

import sys

from vlsft.cli.train import run_in_process

if __name__ == "__main__":
    sys.exit(run_in_process())
