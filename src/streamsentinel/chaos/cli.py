"""`streamsentinel chaos-server`: run the fault-injecting server in the foreground."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from .faults import Fault
from .plan import FaultPlan, FaultSpec, parse_fault_weights
from .replay import load_recordings
from .server import ChaosServer

__all__ = ["build_parser", "build_server", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `chaos-server`."""
    parser = argparse.ArgumentParser(
        prog="streamsentinel chaos-server",
        description="OpenAI-compatible HTTP server that breaks streams on purpose (one fault per request).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port, 0 = any free one (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds fault draws and generated text")
    parser.add_argument(
        "--fault-weights",
        metavar="FAULT=W,...",
        help="random mix, e.g. none=80,reset=5,eof_chunked=5 (default: the built-in demo mix)",
    )
    parser.add_argument(
        "--clean", action="store_true", help="no random faults (x-chaos-* headers still work)"
    )
    parser.add_argument(
        "--replay", metavar="DIR", help="serve the NAME.sse/NAME.json recordings in DIR round-robin"
    )
    parser.add_argument(
        "--chunks", type=int, default=20, help="content pieces per answer (default: %(default)s)"
    )
    parser.add_argument(
        "--stall-seconds", type=float, default=3.0, help="how long stalls last (default: %(default)s)"
    )
    parser.add_argument(
        "--retry-after-ms",
        type=int,
        default=5,
        help="retry-after-ms sent with 429/500 (default: %(default)s)",
    )
    parser.add_argument(
        "--after-min", type=int, default=1, help="smallest drawn `after` (default: %(default)s)"
    )
    parser.add_argument(
        "--after-max", type=int, default=8, help="largest drawn `after` (default: %(default)s)"
    )
    return parser


def build_server(args: argparse.Namespace) -> ChaosServer:
    """A (not yet started) server configured from parsed arguments.

    Raises:
        ValueError: bad `--fault-weights`.
    """
    template = FaultSpec(stall_seconds=args.stall_seconds, retry_after_ms=args.retry_after_ms)
    if args.clean:
        weights: dict[Fault, float] = {}
    elif args.fault_weights:
        weights = parse_fault_weights(args.fault_weights)
    else:
        weights = dict(FaultPlan.default(args.seed).weights)
    recordings = load_recordings(args.replay) if args.replay else []
    plan = FaultPlan(
        weights=weights,
        seed=args.seed,
        template=template,
        after_range=(args.after_min, args.after_max),
        replay=bool(recordings),
    )
    return ChaosServer(
        plan, host=args.host, port=args.port, seed=args.seed, recordings=recordings, chunks=args.chunks
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let `kill` stop the server as Ctrl-C does (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C; prints the base URL, and a count of faults served at exit."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        server = build_server(args)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    try:
        server.start()
    except OSError as err:
        print(f"chaos-server: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    print(f"chaos-server listening: base_url={server.base_url}", flush=True)
    weights = server.plan.weights
    if weights:
        mix = ", ".join(f"{fault}={weight:g}" for fault, weight in weights.items())
        print(f"fault mix (seed {args.seed}): {mix}", flush=True)
    if args.replay:
        print(f"replaying {len(server.recordings)} recordings from {args.replay}", flush=True)
    try:
        with _sigterm_as_interrupt():
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    summary = server.summary()
    counts = ", ".join(f"{fault}={count}" for fault, count in summary.most_common())
    print(f"served {sum(summary.values())} requests" + (f": {counts}" if counts else ""))
    return 0
