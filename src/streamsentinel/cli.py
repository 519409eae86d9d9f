"""The ``streamsentinel`` command: ``demo`` (the main job), ``chaos-server`` and ``run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: streamsentinel COMMAND [ARGS]

commands:
  demo           run streaming traffic against the fault server and check the accounting
  chaos-server   serve the fault-injecting OpenAI-compatible server on 127.0.0.1
  run            run a command with streamsentinel loaded: run [--metrics-port N] -- COMMAND ...

'streamsentinel COMMAND --help' for a command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
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
