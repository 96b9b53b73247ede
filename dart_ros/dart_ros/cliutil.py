"""Command-line flags that map 1:1 onto a config dataclass.

Every field becomes ``--field-name``; the flag's default is None, so an unset flag leaves the
dataclass default in charge (one source of truth). Bools take ``true/false``; tuples/lists take
several values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type, TypeVar

T = TypeVar("T")


def _base(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base(args[0])
    return tp


def _bool(text: str) -> bool:
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: Type, group: Optional[str] = None, doc: Dict[str, str] = None
):
    """One flag per field; help from ``doc`` or the class's ``FIELD_HELP``, with the default."""
    doc = doc or getattr(cls, "FIELD_HELP", None)
    hints = typing.get_type_hints(cls)
    target = parser.add_argument_group(group) if group else parser
    for f in dataclasses.fields(cls):
        tp = _base(hints[f.name])
        origin = typing.get_origin(tp)
        kw: Dict[str, Any] = {"default": None, "help": (doc or {}).get(f.name, "")}
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        kw["help"] = (kw["help"] + f" (default: {default!r})").strip()
        if tp is bool:
            kw["type"] = _bool
        elif origin in (tuple, list):
            inner = _base(typing.get_args(tp)[0]) if typing.get_args(tp) else str
            if inner not in (int, float, str):
                continue  # nested structures have no flag form
            kw["type"] = inner
            kw["nargs"] = "+"
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            continue
        target.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kw)
    return parser


def dataclass_from_args(cls: Type[T], args: argparse.Namespace, **overrides) -> T:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if typing.get_origin(_base(hints[f.name])) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    kwargs.update(overrides)
    return cls(**kwargs)


def dump(cfg, path: str) -> None:
    """Write the resolved config (a dataclass, or a dict of them) next to an output (reproducibility)."""
    data = {k: dataclasses.asdict(v) for k, v in cfg.items()} if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


def parse_job_args(doc: str, groups: Sequence[Tuple[Type, Optional[str]]], argv=None):
    """Parser of an offline job from its config dataclasses (``(cls, group title)`` each), the
    arguments parsed and logging set up; returns ``(parser, args)`` (the parser for ``ap.error``)."""
    import logging

    from dart_ros.config import FIELD_HELP, DetectorConfig

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for cls, group in groups:
        add_dataclass_flags(ap, cls, group=group, doc=FIELD_HELP if cls is DetectorConfig else None)
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return ap, args


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback (default: one line)")


def cli_main(body: Callable[[Optional[Sequence[str]]], int], argv=None, prog: str = "") -> int:
    """Run a tool's ``body(argv)``: an error ends it with one line on stderr and exit status 1 (the
    traceback with ``--debug``); Ctrl-C says how to resume. Finished work stays on disk either way."""
    from dart_ros.types import one_line_error

    args = sys.argv[1:] if argv is None else list(argv)
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return body(argv) or 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished work is kept, the same command continues it", file=sys.stderr)
        return 130
    except Exception as e:
        if "--debug" in args:
            raise
        print(f"{prog}: error: {one_line_error(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1


def run_training_job(cls: Type[T], run, doc: str, argv=None) -> int:
    """Main of an offline training job: flags of ``cls``, logging, ``run(cfg)``'s summary printed (the
    job writes ``<out_dir>/config.json`` once its identity check has passed)."""

    def body(argv):
        cfg = dataclass_from_args(cls, parse_job_args(doc, [(cls, None)], argv)[1])
        print(json.dumps(run(cfg), indent=1, default=str))
        return 0

    return cli_main(body, argv)
