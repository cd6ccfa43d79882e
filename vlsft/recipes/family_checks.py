"""Refusals that depend on the model's family, made from the processor alone, in one place used by the dry run
(`vlsft.recipes.plan.describe_plan`) and by the run (`vlsft.recipes.build.build_trainer`, before the datasets and
the model load): a setting the family cannot train is refused by `--dry-run`, not after validation and the model
load with a traceback.

The rules themselves stay in the core, where the Python API (`VLSFTTrainer`) applies them too; this module runs them
ahead of time and turns their refusal into a `RecipeError`.
"""

from __future__ import annotations

from vlsft.families import Family
from vlsft.recipes.registry import build_local_model, is_local_model
from vlsft.recipes.schema import Recipe, RecipeError


def refuse_unsupported_for_family(processor, args, recipe: Recipe | None = None) -> Family:
    """The family the run trains as (from the training template, else the processor), or a `RecipeError` naming the
    setting of `args` (a `VLSFTConfig`) that the family cannot train and the fix:
    - a model that is not a decoder-only chat model (`vlsft.not_chat_models`), by `recipe`'s model config where it is
      available without a download, and by the processor;
    - a processor or a chat template vlsft cannot mask (`vlsft.collator.training_collator` refuses it);
    - `reasoning_weight` on a family without single-token reasoning markers (Qwen2.5-VL, Qwen3-VL, Gemma 3, ...);
    - `packing` / `padding_free` on a family vlsft does not pack (`Family.packed_positions`), or, for a model without
      a record, on a language model whose packed rows could not be kept apart: decided from `recipe`'s model config
      where it is available without a download, else by the run once the model loads.
    These are the checks the trainer makes when it builds its collator and sets up packing."""
    from vlsft.collator import training_collator
    from vlsft.generic_family import is_generic_family
    from vlsft.not_chat_models import refuse_not_chat_model
    from vlsft.packing import check_family_packs, packing_enabled

    try:
        # A registered tiny model is a chat model by construction: only a real model's config is read for this.
        real_model = recipe is not None and not is_local_model(recipe.model.name_or_path)
        refuse_not_chat_model(model_config_available_offline(recipe) if real_model else None, processor,
                              args.chat_template_path)
        family = training_collator(processor, args).family
        if packing_enabled(args):
            needs_model = is_generic_family(family) and recipe is not None
            check_family_packs(family, model_config_available_offline(recipe) if needs_model else None)
    except ValueError as error:
        raise RecipeError(f"`training`: {error}") from error
    return family


def processor_available_offline(recipe: Recipe):
    """The recipe's processor when it can be had without a download (a registered local model, a model directory,
    a Hub id in the cache), else None: a dry run fetches nothing."""
    model = recipe.model
    if is_local_model(model.name_or_path):
        try:
            return build_local_model(model.name_or_path, model.tiny, meta=True)[1]
        except TypeError as error:  # `model.tiny` holds an argument this builder does not take
            raise RecipeError(f"`model.tiny`: {error}") from error
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(
            model.name_or_path,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            local_files_only=True,
        )
    except Exception:  # not in the cache (or no network to ask): the run checks the family once it has it
        return None


def model_config_available_offline(recipe: Recipe):
    """The recipe's model config when it can be had without a download (a registered local model, built without
    weights; a model directory; a Hub id in the cache), else None."""
    model = recipe.model
    if is_local_model(model.name_or_path):
        return build_local_model(model.name_or_path, model.tiny, meta=True)[0].config
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model.name_or_path,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            local_files_only=True,
        )
    except Exception:  # not in the cache (or no network to ask): the run checks the model once it loads
        return None
