"""Refusals that the model's family decides, made from the processor before the datasets load or the model loads:
by `vlsft train` (`recipes.build`) right after the processor loads, and by its dry run (`recipes.plan`) when the
processor is available without a download."""

from __future__ import annotations

from vlsft.recipes.registry import build_local_model, is_local_model
from vlsft.recipes.schema import Recipe, RecipeError


def check_family_packs_in_recipe(processor, args) -> None:
    """With `packing` or `padding_free`, a `RecipeError` (with the fix) when vlsft does not pack the processor's
    family (`Family.packed_positions`)."""
    from vlsft.collator import training_collator
    from vlsft.packing import check_family_packs, packing_enabled

    if not packing_enabled(args):
        return
    family = training_collator(processor, args).family
    try:
        check_family_packs(family)
    except ValueError as error:
        raise RecipeError(f"`training`: {error}") from error


def offline_processor(recipe: Recipe):
    """The model's processor when it is available without a download (a registered tiny model, a local directory,
    the Hub cache), else None."""
    model = recipe.model
    try:
        if is_local_model(model.name_or_path):
            return build_local_model(model.name_or_path, model.tiny, meta=True)[1]
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(
            model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code, local_files_only=True
        )
    except Exception:  # offline without a cached processor, a custom processor class, ...
        return None


def packing_plan(recipe: Recipe, args) -> str | None:
    """The dry run's line on packing (None without it); a `RecipeError` when vlsft does not pack the family."""
    from vlsft.packing import packing_enabled

    if not packing_enabled(args):
        return None
    what = f"rows best-fit decreasing into packs of {args.max_length} tokens" if args.packing else "padding-free batches"
    processor = offline_processor(recipe)
    if processor is None:
        return f"{what} (the model family is checked once the processor loads: it is not available offline)"
    check_family_packs_in_recipe(processor, args)
    return what
