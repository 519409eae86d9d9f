"""One instruction-count process: sync chat streams through the real openai SDK, bare then instrumented.

    python benchmarks/instr_worker.py VARIANT PHASES [--layout SEED] [--part both|bare|instrumented]
                                      [--check]

PHASES: comma-separated CHUNKSxSTREAMS, e.g. ``5x3,5x15,125x3`` (3 streams of 5 chunks, then 15
of 5, then 3 of 125). A K-chunk stream is one role chunk, K - 2 content chunks and one finish chunk,
then ``[DONE]``.

Run by ``benchmarks/bench_instructions.py`` under ``valgrind --tool=callgrind``; ``Setup`` is also
used by ``benchmarks/bench_memory.py``. The SDK talks to an in-process ``httpx2.MockTransport``
serving a prepared SSE body; every variant builds the same OTel SDK ``TracerProvider``
(``SimpleSpanProcessor`` into an ``InMemorySpanExporter``) and imports the same libraries.

The process runs the phases twice: first on the bare SDK, then after instrumenting as VARIANT says
(with its library's default settings) on a client made after ``instrument()``. Each half starts
with a warm-up of every stream shape. When ``STREAMSENTINEL_BENCH_CALLGRIND_LIB`` names the
compiled helper (see ``bench_instructions.py``), callgrind's instrumentation is turned on after the
first warm-up (the process ran until then under ``--instr-atstart=no``, about 5 times faster) and
the counts dumped after each phase, and after the second ``instrument()`` and warm-up: 7 files,
phases 1-3 bare, 4 not measured, 5-7 instrumented. Bare and instrumented in one process share one
memory layout: CPython's method cache indexes by the addresses of interned names, so a layout alone
moves a process's count by a few tenths of a percent, which cancels here. ``--layout SEED``
allocates a few hundred small objects first, to measure in another layout.

Without the helper the caller runs ``--part bare`` and ``--part instrumented`` processes of one
phase each, and differences the whole-process totals.

Prints one JSON line: variant, phases, items received per stream, spans exported (``--check``).
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

VARIANTS: dict[str, str] = {
    "bare": "the openai SDK alone (same libraries imported, nothing instrumented)",
    "streamsentinel": "streamsentinel.instrument(tracer_provider=<OTel SDK>), other options default",
    "streamsentinel-untraced": "streamsentinel.instrument(): no tracer provider (OTel's global no-op)",
    "streamsentinel-chunk-events-all": "streamsentinel.instrument(tracer_provider=..., chunk_events='all')",
    "streamsentinel-many-models": (
        "as streamsentinel, every stream another model name (past max_model_labels, 100, they share"
        " the _other label)"
    ),
    # The peers: OpenAIInstrumentor().instrument(tracer_provider=...) of each package.
    "openai-v2": "opentelemetry-instrumentation-openai-v2",
    "genai-openai": "opentelemetry-instrumentation-genai-openai",
    "openllmetry": "opentelemetry-instrumentation-openai (OpenLLMetry)",
    "openinference": "openinference-instrumentation-openai",
}

PEER_MODULES = {
    "openai-v2": "opentelemetry.instrumentation.openai_v2",
    "genai-openai": "opentelemetry.instrumentation.genai.openai",
    "openllmetry": "opentelemetry.instrumentation.openai",
    "openinference": "openinference.instrumentation.openai",
}

WARMUP_STREAMS = 5
MANY_MODELS_SEEN = 300  # the many-models variant's warm-up: new model names before measuring


class Models:
    """The model name of each stream: always ``gpt-4o-mini``, or with ``many`` a new name each
    time (the bare SDK gets the same names as the instrumented one)."""

    def __init__(self, many: bool) -> None:
        self.many = many
        self.count = 0

    def next(self) -> str:
        if not self.many:
            return "gpt-4o-mini"
        self.count += 1
        return f"model-{self.count}"


HEADERS = {
    "content-type": "text/event-stream",
    "x-request-id": "req_1",
    "x-ratelimit-remaining-requests": "99",
    "x-ratelimit-reset-requests": "1s",
    "x-ratelimit-remaining-tokens": "9000",
    "x-ratelimit-reset-tokens": "6m0s",
}


def chunk_json(i: int, delta: dict[str, Any], finish: str | None = None) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_1",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
    )


def sse_events(chunks: int) -> list[str]:
    """The SSE events of a ``chunks``-chunk stream (at least 2: role and finish), ``[DONE]`` last."""
    if chunks < 2:
        raise ValueError("a stream has at least 2 chunks (role, finish)")
    out = ["data: " + chunk_json(0, {"role": "assistant", "content": ""}) + "\n\n"]
    out += ["data: " + chunk_json(i, {"content": f"tok{i} "}) + "\n\n" for i in range(1, chunks - 1)]
    out.append("data: " + chunk_json(chunks - 1, {}, "stop") + "\n\n")
    out.append("data: [DONE]\n\n")
    return out


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the variables that would change any library's default settings."""
    prefixes = ("STREAMSENTINEL_", "OTEL_", "TRACELOOP_", "OPENINFERENCE_")
    out = {k: v for k, v in env.items() if not k.startswith(prefixes)}
    out["PYTHONHASHSEED"] = "0"
    return out


class Setup:
    """The variant's tracer provider and exporter, made the same way for every variant."""

    def __init__(self, variant: str, *, instrument: bool = True) -> None:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
        # Every variant imports the same libraries before instrumenting (streamsentinel's package
        # is light; the peers' are imported only by their own variant).
        import httpx2  # noqa: F401
        import openai  # noqa: F401
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.variant = variant
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        if instrument:
            self.instrument()

    def instrument(self) -> None:
        """Instrument as the variant says (``bare``: nothing)."""
        instrument = _INSTRUMENT.get(self.variant)
        if instrument is not None:
            instrument(self)


def _streamsentinel(**options: Any) -> Callable[[Setup], None]:
    def instrument(setup: Setup) -> None:
        import streamsentinel

        if "tracer_provider" in options:
            options["tracer_provider"] = setup.provider
        streamsentinel.instrument(**options)

    return instrument


def _peer(variant: str) -> Callable[[Setup], None]:
    def instrument(setup: Setup) -> None:
        module = importlib.import_module(PEER_MODULES[variant])
        module.OpenAIInstrumentor().instrument(tracer_provider=setup.provider)

    return instrument


_INSTRUMENT: dict[str, Callable[[Setup], None]] = {
    "streamsentinel": _streamsentinel(tracer_provider=None),
    "streamsentinel-untraced": _streamsentinel(),
    "streamsentinel-chunk-events-all": _streamsentinel(tracer_provider=None, chunk_events="all"),
    "streamsentinel-many-models": _streamsentinel(tracer_provider=None),
    **{variant: _peer(variant) for variant in PEER_MODULES},
}


def callgrind_helper() -> Any:
    """The compiled helper (``bench_start_instrumentation``, ``bench_dump_stats``), or None."""
    path = os.environ.get("STREAMSENTINEL_BENCH_CALLGRIND_LIB")
    return ctypes.CDLL(path) if path else None


def perturb_layout(seed: int) -> list[bytes]:
    """Small objects of assorted sizes (kept alive by the caller) that move later allocations."""
    return [bytes(1 + (i * 7919 + seed * 104729) % 480) for i in range(seed * 97)]


def parse_phases(text: str) -> list[tuple[int, int]]:
    phases = []
    for part in text.split(","):
        chunks, _, streams = part.partition("x")
        phases.append((int(chunks), int(streams)))
    return phases


def main() -> None:
    variant, phases = sys.argv[1], parse_phases(sys.argv[2])
    args = sys.argv[3:]
    check = "--check" in args
    part = args[args.index("--part") + 1] if "--part" in args else "both"
    seed = int(args[args.index("--layout") + 1]) if "--layout" in args else 0
    keep = perturb_layout(seed)
    import httpx2
    import openai

    setup = Setup(variant, instrument=False)
    bodies = {chunks: "".join(sse_events(chunks)).encode() for chunks, _ in phases}
    current = [b""]

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers=HEADERS, content=current[0])

    def new_client() -> openai.OpenAI:
        return openai.OpenAI(
            api_key="bench",
            base_url="http://bench.local/v1",
            max_retries=0,
            http_client=openai.DefaultHttpx2Client(transport=httpx2.MockTransport(handler)),
        )

    messages: Any = [{"role": "user", "content": "hi"}]
    models = Models(variant == "streamsentinel-many-models")
    items: dict[int, set[int]] = {chunks: set() for chunks in bodies}
    helper = None if check else callgrind_helper()

    def run(client: openai.OpenAI, chunks: int) -> None:
        stream = client.chat.completions.create(model=models.next(), messages=messages, stream=True)
        n = 0
        for _ in stream:
            n += 1
        items[chunks].add(n)
        setup.exporter.clear()

    def warm_up(client: openai.OpenAI) -> None:
        for chunks, body in bodies.items():
            current[0] = body
            for _ in range(WARMUP_STREAMS):
                run(client, chunks)
        # Many models: the steady state, past max_model_labels distinct names (in each half).
        seen, chunks = models.count + MANY_MODELS_SEEN, next(iter(bodies))
        current[0] = bodies[chunks]
        while models.many and models.count < seen:
            run(client, chunks)
        # Long-lived objects (modules, the warm-up's caches) out of the collector's way, so a
        # collection costs the same whatever the variant imported.
        gc.collect()
        gc.freeze()

    def measure(client: openai.OpenAI) -> None:
        for chunks, streams in phases:
            current[0] = bodies[chunks]
            for _ in range(streams):
                run(client, chunks)
            if helper is not None:
                helper.bench_dump_stats()

    if part in ("both", "bare"):
        client = new_client()
        warm_up(client)
        if helper is not None:
            helper.bench_start_instrumentation()
        if not check:
            measure(client)
    spans = 0
    if part in ("both", "instrumented"):
        setup.instrument()
        client = new_client()  # made after instrument(), as an application would
        warm_up(client)
        if helper is not None:
            helper.bench_start_instrumentation()
            helper.bench_dump_stats()  # instrument() and the warm-up: not measured
        if check:
            chunks = phases[0][0]
            current[0] = bodies[chunks]
            stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
            items[chunks].add(sum(1 for _ in stream))
            spans = len(setup.exporter.get_finished_spans())
        else:
            measure(client)
    result = {
        "variant": variant,
        "part": part,
        "phases": [f"{c}x{s}" for c, s in phases],
        "items_per_stream": {str(c): sorted(n) for c, n in items.items()},
        "spans_per_stream": spans,
        "layout_objects": len(keep),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # no interpreter finalisation under valgrind (it is not measured anyway)


if __name__ == "__main__":
    main()
