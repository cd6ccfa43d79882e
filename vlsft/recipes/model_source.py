"""Where a recipe's model comes from, checked before anything loads: a model registered by name and built here, a
local directory, the Hub cache, or the Hub (checked to answer within seconds)."""

from __future__ import annotations

import os
import re

from vlsft.recipes.registry import is_local_model
from vlsft.recipes.schema import RecipeError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_model_source(name_or_path: str, revision: str | None = None, reach_hub: bool = True) -> str:
    """Where the model comes from, checked without loading anything: "built locally" (a registered name such as
    `tiny-qwen3-vl`), "local" (a directory with a
    `config.json`), "hub cache" (a Hub id already downloaded) or "hub" (a Hub id; with `reach_hub`, the Hub answers).
    Raises `RecipeError` with the fix otherwise, within seconds when there is no network (instead of the minutes of
    retries a download takes to give up)."""
    if is_local_model(name_or_path):
        return "built locally"
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise RecipeError(f"`model.name_or_path`: {name_or_path!r} is a directory without a config.json; pass the model's directory.")
        return "local"
    if os.path.exists(path):
        raise RecipeError(f"`model.name_or_path`: {name_or_path!r} is a file; pass the model's directory (with config.json).")
    if name_or_path.startswith((".", "/", "~")) or not _HUB_ID.match(name_or_path):
        raise RecipeError(f"`model.name_or_path`: {name_or_path!r} does not exist (and is not a Hub model id like `Qwen/Qwen3-VL-2B-Instruct`).")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json", revision=revision), str):
        return "hub cache"
    if not reach_hub:
        return "hub"
    if constants.HF_HUB_OFFLINE:
        raise RecipeError(
            f"`model.name_or_path`: {name_or_path!r} is not in the Hub cache and HF_HUB_OFFLINE is set: cannot reach "
            "the Hub; pass a local path (a directory with the model's config.json and weights)."
        )
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
    except OSError as error:
        raise RecipeError(
            f"`model.name_or_path`: {name_or_path!r} is a Hub model id that is not in the Hub cache, and vlsft "
            "cannot reach the Hub; pass a local path (a directory with the model's config.json and weights), or fix "
            f"the network ({constants.ENDPOINT}: {error})."
        ) from error
    return "hub"
