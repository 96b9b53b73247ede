"""``--help`` for the ROS executables, whose options are ROS parameters (``--ros-args -p``)."""

from __future__ import annotations

import sys
from typing import Iterable, Optional, Sequence, Tuple


def exit_with_help_if_asked(
    doc: str, parameters: Iterable[Tuple[str, object, str]], argv: Optional[Sequence[str]] = None
) -> None:
    """Print ``doc`` and the parameters (name, default, meaning) and exit 0 when ``-h``/``--help``
    comes before ``--ros-args``; otherwise return."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    if "-h" not in own and "--help" not in own:
        return
    lines = [(doc or "").strip(), "\nParameters (--ros-args -p name:=value; -r image:=<topic> remaps the input):"]
    for name, default, meaning in parameters:
        lines.append(f"  {name} (default {default!r}){': ' + meaning if meaning else ''}")
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `--help | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    raise SystemExit(0)
