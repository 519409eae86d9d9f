"""`streamsentinel chaos-server`: run the fault-injecting server in the foreground."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from .faults import Fault
from .plan import FaultPlan, FaultSpec, fault_names, parse_fault, parse_fault_weights
from .records import RequestRecord
from .replay import load_recordings
from .server import ChaosServer

__all__ = ["build_parser", "build_server", "format_record", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `chaos-server`."""
    parser = argparse.ArgumentParser(
        prog="streamsentinel chaos-server",
        description="OpenAI-compatible HTTP server that breaks streams on purpose (one fault per request).",
        epilog=f"faults: {fault_names()}. Each request is logged on stderr (request number, fault); "
        "x-chaos-* request headers pin one request's fault (see README, 'The fault server').",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=8080, help="port, 0 = any free one (default: %(default)s)"
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
        "--chunks", type=_positive, default=20, help="content pieces per answer (default: %(default)s)"
    )
    parser.add_argument(
        "--stall-seconds", type=_seconds, default=3.0, help="how long stalls last (default: %(default)s)"
    )
    parser.add_argument(
        "--retry-after-ms",
        type=int,
        default=5,
        help="retry-after-ms sent with 429/500 (default: %(default)s)",
    )
    parser.add_argument(
        "--fail-first",
        type=_non_negative,
        default=0,
        metavar="N",
        help="the first N requests get --fault, then every request succeeds (unless --fault-weights "
        "gives a mix for after them)",
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        default=Fault.SERVER_ERROR,
        help="the fault of the --fail-first requests (default: %(default)s)",
    )
    parser.add_argument(
        "--no-done",
        action="store_true",
        help="end every chat/completions stream without data: [DONE] (as some vLLM / MLX builds do)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not log one line per request on stderr")
    parser.add_argument(
        "--after-min", type=_non_negative, default=1, help="smallest drawn `after` (default: %(default)s)"
    )
    parser.add_argument(
        "--after-max", type=_non_negative, default=8, help="largest drawn `after` (default: %(default)s)"
    )
    return parser


def _fault(text: str) -> Fault:
    try:
        return parse_fault(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def format_record(record: RequestRecord) -> str:
    """The stderr line logged for one request: its number, what it was and the fault applied."""
    what = f"{record.method} {record.path}" + (" stream" if record.stream else "")
    line = f"chaos-server: #{record.seq} {what} fault={record.fault}"
    if record.status is not None:
        line += f" status={record.status}"
    if record.retry_count:
        line += f" retry={record.retry_count}"
    if record.no_done:
        line += " no_done"
    if record.client_disconnected:
        line += " client_gone"
    return line


def _log_record(record: RequestRecord) -> None:
    print(format_record(record), file=sys.stderr, flush=True)


def build_server(args: argparse.Namespace) -> ChaosServer:
    """A (not yet started) server configured from parsed arguments.

    Raises:
        ValueError: bad `--fault-weights`, `--after-min` above `--after-max`, a bad `--replay`.
    """
    if args.after_min > args.after_max:
        raise ValueError(f"--after-min {args.after_min} is above --after-max {args.after_max}")
    template = FaultSpec(stall_seconds=args.stall_seconds, retry_after_ms=args.retry_after_ms)
    if args.fault_weights:
        weights = parse_fault_weights(args.fault_weights)
    elif args.clean or args.fail_first:
        weights = {}
    else:
        weights = dict(FaultPlan.default(args.seed).weights)
    recordings = []
    if args.replay:
        if not Path(args.replay).is_dir():
            raise ValueError(f"--replay {args.replay}: no such directory")
        recordings = load_recordings(args.replay)
        if not recordings:
            raise ValueError(f"--replay {args.replay}: no NAME.json + NAME.sse recordings in it")
    plan = FaultPlan(
        weights=weights,
        seed=args.seed,
        template=template,
        after_range=(args.after_min, args.after_max),
        replay=bool(recordings),
        fail_first=args.fail_first,
        fail_fault=args.fault,
        no_done=args.no_done,
    )
    return ChaosServer(
        plan,
        host=args.host,
        port=args.port,
        seed=args.seed,
        recordings=recordings,
        chunks=args.chunks,
        on_record=None if args.quiet else _log_record,
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
    if args.fail_first:
        print(f"failing the first {args.fail_first} requests with {args.fault}", flush=True)
    if args.no_done:
        print("chat/completions streams end without data: [DONE]", flush=True)
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
