"""The ``streamsentinel`` command: ``demo`` (the main job), ``chaos-server``, ``run`` and ``dashboards``."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from collections.abc import Sequence

USAGE = """usage: streamsentinel [--version] COMMAND [ARGS]

commands:
  demo           run streaming traffic against the fault server and check the accounting
  chaos-server   serve the fault-injecting OpenAI-compatible server on 127.0.0.1
  run            run a command with streamsentinel loaded: run [--metrics-port N] -- COMMAND ...
  dashboards     write the Grafana dashboard and the Prometheus alert rules: dashboards DIR

'streamsentinel COMMAND --help' for a command's options."""


def version() -> str:
    """The installed package's version (``importlib.metadata``)."""
    try:
        return importlib.metadata.version("streamsentinel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


# The modules each command needs beyond the library's own dependencies, and the extra bringing them.
_EXTRAS = {"demo": (("rich", "h11"), "demo"), "chaos-server": (("h11",), "chaos")}


def _missing_extra(command: str) -> str | None:
    """One line naming the extra to install when ``command`` cannot import what it needs."""
    needs = _EXTRAS.get(command)
    if needs is None:
        return None
    modules, extra = needs
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"streamsentinel {command}: needs {', '.join(missing)} (not installed): "
        f"pip install 'streamsentinel[{extra}]'"
    )


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
    missing = _missing_extra(command)
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if command == "chaos-server":
        from .chaos.cli import main as chaos_main

        return chaos_main(rest)
    if command == "run":
        from .launcher import main as run_main

        return run_main(rest)
    if command == "dashboards":
        from .assets import main as assets_main

        return assets_main(rest)
    print(f"streamsentinel: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
