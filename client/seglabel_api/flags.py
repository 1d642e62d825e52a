"""Every command's request flags, derived from the options' declaration (``seglabel_api.options``):
``--name-with-dashes`` (or the option's ``flag``) with its declared help, type and default, read
back into the options."""

from __future__ import annotations

import argparse
import typing
from typing import Any

from seglabel_api import options


def add_flags(parser: argparse.ArgumentParser, scope: str, defaults: dict[str, Any] | None = None,
              title: str = "request options") -> None:  # fmt: skip
    """Every option of ``scope`` as a flag of ``parser`` (``--name-with-dashes``, or its ``flag``),
    with the declared help; ``defaults`` overrides declared defaults by option name."""
    group = parser.add_argument_group(title)
    hints = options.hints()
    for f in options.declared(scope):
        meta = f.metadata
        if not meta["cli"]:
            continue
        name = "--" + (meta["flag"] or f.name).replace("_", "-")
        value = (defaults or {}).get(f.name, options.default(f))
        kw: dict[str, Any] = dict(dest=f"option.{f.name}", help=meta["help"])
        tp = hints[f.name]
        if tp is bool:
            group.add_argument(name, action="store_true", **kw)
            continue
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        elif meta["parse"] is not None:
            kw.update(type=meta["parse"], metavar=meta["metavar"])
        else:
            kw["type"] = next(a for a in (typing.get_args(tp) or (tp,)) if a is not type(None))
        if meta["append"]:
            kw["action"] = "append"
        group.add_argument(name, default=None if meta["append"] else value, **kw)


def from_args(args: argparse.Namespace, scope: str) -> options.SegmentOptions:
    """The options a command line parsed with :func:`add_flags` gives."""
    values: dict[str, Any] = {}
    for f in options.declared(scope):
        if f.metadata["cli"]:
            value = getattr(args, f"option.{f.name}")
            values[f.name] = options.coerce(f, value) if value is not None or f.metadata["append"] else value
    return options.SegmentOptions(**values)
