"""argparse types for the benches' comma-separated lists: a bad item is a one-line usage
error naming it, not a traceback.

>>> ints("1,10,64"), floats("0,0.5"), one_of("iid", "noniid")("iid,noniid")
([1, 10, 64], [0.0, 0.5], ['iid', 'noniid'])
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def _items(text: str, convert: Callable[[str], object], kind: str) -> list:
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            out.append(convert(item))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not {kind}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind}s")
    return out


def ints(text: str) -> list[int]:
    return _items(text, int, "an integer")


def floats(text: str) -> list[float]:
    return _items(text, float, "a number")


def names(text: str) -> list[str]:
    return _items(text, str, "a name")


def one_of(*allowed: str) -> Callable[[str], list[str]]:
    """A list whose items must each be one of ``allowed``."""
    def check(item: str) -> str:
        if item not in allowed:
            raise ValueError(item)
        return item
    return lambda text: _items(text, check, f"one of {', '.join(allowed)}")


def json_settings(text: str) -> dict:
    """A ``--set`` value: a JSON object of run settings (checked by the config when used).

    >>> json_settings('{"learn_batch": 10}')
    {'learn_batch': 10}
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of settings, got {text!r}")
    return value
