"""The `vlsft` command: `vlsft train --config RECIPE [--dry-run] [--key value ...]` and `vlsft inspect ...`."""

from __future__ import annotations

import sys

USAGE = """usage: vlsft <command> [arguments]

commands:
  train     fine-tune from a recipe:   vlsft train --config recipes/qwen3vl.yaml [--dry-run] [--key value ...]
  inspect   show what the model is trained on (rendered rows, supervised tokens):  vlsft inspect --help
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    # Subcommands are imported only when called: `vlsft train` needs no inspection code and the reverse.
    if command == "train":
        from vlsft.cli.train import main as train_main

        return train_main(rest)
    if command == "inspect":
        from vlsft.cli.inspect import main as inspect_main

        return inspect_main(rest)
    print(f"vlsft: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
