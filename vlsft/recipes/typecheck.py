"""Recipe values against type annotations: does a YAML value fit a field, and the error that names the key and the
expected type when it does not (with the closest valid key for a typo)."""

from __future__ import annotations

import difflib
import enum
import types
import typing
from typing import Any

from vlsft.recipes.schema import RecipeError


def type_matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type annotation. Unknown annotation kinds are accepted (the config checks)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(type_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {member.value for member in hint}
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            return False
        args = typing.get_args(hint)
        return not args or args[0] is Ellipsis or all(type_matches(item, args[0]) for item in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(hint)
        return not args or all(type_matches(item, args[1]) for item in value.values())
    return True


def type_name(hint: Any) -> str:
    """A readable name of a type annotation: `float`, `a str or null`, `a list of str`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        names = " or ".join(dict.fromkeys(type_name(arg) for arg in args))
        return names + (" or null" if len(args) < len(typing.get_args(hint)) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in hint)
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(args[0], type_name(args[0]))}" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` if it fits `hint`, made exact where YAML guessed another scalar type (`revision: 2024` or
    `--output_dir 123` is meant as a string, `alpha: 16` for a float field is 16.0); else a `RecipeError` naming the key and the expected type."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, bool) and bool not in args and not type_matches(value, hint):
        # YAML 1.1 reads `no`/`yes`/`true`/`false` as booleans: `--save_strategy no` means the strategy "no",
        # `--resume_from_checkpoint true` the string "true" (resume from the newest complete checkpoint).
        enums = [arg for arg in args if isinstance(arg, type) and issubclass(arg, enum.Enum)]
        if value is False and any("no" in {member.value for member in e} for e in enums):
            return "no"
        if str in args:
            return "true" if value else "false"
    if type_matches(value, hint):
        if isinstance(value, int) and not isinstance(value, bool) and float in args and int not in args:
            return float(value)
        return value
    if isinstance(value, int) and not isinstance(value, bool) and str in args:
        return str(value)
    raise RecipeError(f"`{where}` must be {type_name(hint)}, got {describe_value(value)}.")


def describe_value(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{kind.get(type(value), type(value).__name__)} ({text})" if value is not None else "null"


def unknown_key(key: str, valid: list[str] | tuple[str, ...], where: str, hint: str = "", what: str = "key") -> None:
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    suggestion = f" Did you mean `{close[0]}`?" if close else ""
    if not close and len(valid) <= 12:
        suggestion += f" Valid: {', '.join(map(str, valid))}."
    raise RecipeError(f"unknown {what} `{key}` in `{where}`{(' ' + hint) if hint else ''}.{suggestion}")

