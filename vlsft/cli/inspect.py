"""`vlsft inspect`: the command line of `vlsft.inspect` (see `vlsft.inspection`). Run it as `vlsft inspect` or
`python -m vlsft.cli.inspect`; not by its path, where its name would shadow the standard library's `inspect`."""

from __future__ import annotations

import argparse
import sys

from vlsft.inspection import inspect
from vlsft.recipes.schema import RecipeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlsft inspect",
        description="Show rows of a recipe's dataset as the trainer trains on them: tokens with the supervised ones "
        "highlighted, token counts, image tokens per image. Extra `--key value` pairs override the recipe.",
    )
    parser.add_argument("--config", required=True, help="the recipe YAML file")
    parser.add_argument("--rows", default="0:5", help="rows to show: 0:5 (default), 7, or 1,4,9")
    parser.add_argument("--split", default="train", choices=("train", "eval"), help="which dataset (default train)")
    parser.add_argument("--html", help="also write an HTML page with the images inline to this file")
    parser.add_argument(
        "--summary", help="instead of rows, write a summary page of the whole dataset to this HTML file: histograms "
        "of row length, supervised share, images per row, video length, and the packs packing would form",
    )
    parser.add_argument("--summary_rows", help="rows the summary measures (default: all), as --rows")
    parser.add_argument("--color", default="auto", choices=("auto", "always", "never"), help="colour on a terminal")
    options, overrides = parser.parse_known_args(argv)
    color = {"auto": None, "always": True, "never": False}[options.color]
    try:
        inspect(
            config=options.config, overrides=overrides, split=options.split, rows=options.rows, html=options.html,
            color=color, summary=options.summary, summary_rows=options.summary_rows,
        )
    except RecipeError as error:
        print(f"vlsft: invalid recipe: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"vlsft inspect: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

