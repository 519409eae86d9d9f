"""The ``streamsentinel`` command: ``demo`` (the main job), ``chaos-server`` and ``run``."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence

USAGE = """usage: streamsentinel [--version] COMMAND [ARGS]

commands:
  demo           run streaming traffic against the fault server and check the accounting
  chaos-server   serve the fault-injecting OpenAI-compatible server on 127.0.0.1
  run            run a command with streamsentinel loaded: run [--metrics-port N] -- COMMAND ...

'streamsentinel COMMAND --help' for a command's options."""


def version() -> str:
    """The installed package's version (``importlib.metadata``)."""
    try:
        return importlib.metadata.version("streamsentinel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C outside a command's own handler: no traceback
        print("streamsentinel: interrupted", file=sys.stderr, flush=True)
        return 130


def _main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"streamsentinel {version()}")
        return 0
    command, rest = args[0], args[1:]
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if command == "chaos-server":
        from .chaos.cli import main as chaos_main

        return chaos_main(rest)
    if command == "run":
        from .launcher import main as run_main

        return run_main(rest)
    print(f"streamsentinel: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
