"""`vlsft inspect`: see exactly what a row trains on: its tokens with the supervised ones highlighted, its images.

    vlsft inspect --config recipes/qwen3vl.yaml [--rows 0:5] [--split eval] [--html rows.html] [--key value ...]
    vlsft inspect --config recipes/qwen3vl.yaml --summary summary.html [--summary_rows 0:10000]

    import vlsft
    vlsft.inspect(config="recipes/qwen3vl.yaml", rows="0:5", html="rows.html")
    vlsft.inspect(dataset, processor, args=VLSFTConfig(...), rows=[3, 7])

Rows go through the training collator itself (same template, tokenizer, image expansion, `max_length` and mask as
`VLSFTTrainer`), so what is shown is what trains. On a terminal the supervised tokens are coloured; elsewhere they
are wrapped in `[[` and `]]`. The HTML page shows the images inline where their tokens are. Rows with per-turn weights
show each supervised run's weight (`{w=0.5}`) and their context-only assistant tokens (weight 0) apart, in
`((` `))` or dimmed.

`--summary PAGE` measures the whole split (or `--summary_rows`) instead: histograms of row length, supervised share,
images per row and video length, and the packs packing would put together (`summary`, `summary_page`).

The modules: `collated` (a row collated and cut into segments), `views` (the records and their text), `html_page`
(the HTML page), `summary` + `summary_page` (the dataset summary), and this one: row selection and `inspect`. The command line is `vlsft.cli.inspect`.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from vlsft.collator import VisionChatCollator, training_collator
from vlsft.inspection.collated import view_row
from vlsft.inspection.html_page import render_html
from vlsft.inspection.summary import DatasetSummary, summarize, summary_text
from vlsft.inspection.summary_page import render_summary_html
from vlsft.inspection.views import CONTEXT_CLOSE, CONTEXT_OPEN, SUPERVISED_CLOSE, SUPERVISED_OPEN, RowView, render_text


def select_rows(spec: str | int | slice | list[int] | range | None, size: int) -> list[int]:
    """Row indices from `"0:5"`, `"3"`, `"1,4,9"`, `"10:"`, an int, a slice or a list (Python slice rules)."""
    if spec is None:
        spec = "0:5"
    if isinstance(spec, int):
        spec = [spec]
    elif isinstance(spec, str):
        text = spec.strip()
        if ":" in text:
            parts = [int(part) if part.strip() else None for part in text.split(":")]
            if len(parts) > 3:
                raise ValueError(f"--rows {spec!r}: use START:STOP, e.g. 0:5")
            spec = slice(*parts)
        else:
            try:
                spec = [int(part) for part in text.split(",") if part.strip()]
            except ValueError:
                raise ValueError(f"--rows {spec!r}: use START:STOP (0:5), one index (3) or a list (1,4,9)") from None
    if isinstance(spec, slice):
        indices = list(range(size)[spec])
        if not indices:
            start, stop = spec.start, spec.stop
            raise ValueError(
                f"--rows {start if start is not None else ''}:{stop if stop is not None else ''} selects no row of the "
                f"{size}-row dataset: use START:STOP with START < STOP (e.g. 0:5)"
            )
        return indices
    indices = list(spec)
    if not indices:
        raise ValueError("--rows selects no row: use START:STOP (0:5), one index (3) or a list (1,4,9)")
    for index in indices:
        if not -size <= index < size:
            raise ValueError(f"row {index} does not exist: the dataset has {size} rows")
    return [index % size for index in indices]


def inspect(
    dataset=None,
    processor=None,
    *,
    config: str | os.PathLike | None = None,
    overrides: list[str] = (),
    split: str = "train",
    args=None,
    collator: VisionChatCollator | None = None,
    rows: str | int | slice | list[int] | None = "0:5",
    html: str | os.PathLike | None = None,
    color: bool | None = None,
    file: TextIO | None = None,
    summary: str | os.PathLike | None = None,
    summary_rows: str | int | slice | list[int] | None = None,
) -> list[RowView] | DatasetSummary:
    """Show rows as the trainer trains on them, and return them as `RowView`s.

    Either `config` (a recipe: its processor, its `split` dataset and its `training` section, with `overrides` as on
    the command line), or `dataset` (a `datasets.Dataset` or a list of rows) with `processor` and `args` (a
    `VLSFTConfig`; default settings without it), or an explicit `collator`.

    Args:
        rows: which rows: `"0:5"`, `"3"`, `"1,4,9"`, an int, a slice or a list.
        html: also write a self-contained HTML page with the images inline to this path.
        color: colour the terminal output; by default, when `file` is a terminal and `NO_COLOR` is unset.
        file: where the text goes (default stdout; pass `io.StringIO()` for none).
        summary: instead of showing rows, measure the dataset (`summary_rows`, default every row) and write the
            summary page (histograms, packs) to this path; returns the `DatasetSummary`.
    """
    if config is not None:
        from vlsft.recipes.build import build_datasets, build_processor, build_training_config
        from vlsft.recipes.loading import load_recipe

        recipe = load_recipe(config, list(overrides))
        processor = build_processor(recipe)
        args = build_training_config(recipe, check_only=True)
        train, evaluation = build_datasets(recipe)
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if split == "eval" and evaluation is None:
            raise ValueError(f"{config}: the recipe has no eval data (`data.eval` or `data.eval_fraction`).")
        dataset = train if split == "train" else evaluation
    if dataset is None:
        raise ValueError("pass a recipe (`config=`) or a `dataset` with its `processor`.")
    if collator is None:
        if processor is None:
            raise ValueError("pass the model's `processor` (or a `collator`) with the dataset.")
        if args is None:
            from vlsft.config import VLSFTConfig

            args = VLSFTConfig(output_dir=os.devnull, report_to="none", use_cpu=True)
        collator = training_collator(processor, args)

    file = sys.stdout if file is None else file
    if summary is not None:
        indices = None if summary_rows is None else select_rows(summary_rows, len(dataset))
        measured = summarize(dataset, collator, indices, seed=args.seed if args is not None else 0)
        name = os.path.basename(os.fspath(config)) if config else "dataset"
        with open(summary, "w", encoding="utf-8") as out:
            out.write(render_summary_html(measured, title=f"vlsft inspect: {name} ({split}) summary"))
        file.write(summary_text(measured) + f"wrote {summary}\n")
        return measured
    views = [view_row(dict(dataset[index]), index, collator) for index in select_rows(rows, len(dataset))]
    if color is None:
        color = hasattr(file, "isatty") and file.isatty() and "NO_COLOR" not in os.environ
    if not color:
        legend = f"(supervised tokens are shown {SUPERVISED_OPEN}like this{SUPERVISED_CLOSE}"
        if any(view.weighted for view in views):
            legend += f" followed by their weight {{w=...}}; untrained assistant tokens {CONTEXT_OPEN}like this{CONTEXT_CLOSE}"
        file.write(legend + ")\n")
    for view in views:
        file.write(render_text(view, color=color))
    if html is not None:
        title = f"vlsft inspect: {os.path.basename(os.fspath(config)) if config else 'dataset'} ({split})"
        with open(html, "w", encoding="utf-8") as out:
            out.write(render_html(views, title=title))
        file.write(f"wrote {html} ({len(views)} rows)\n")
    return views
