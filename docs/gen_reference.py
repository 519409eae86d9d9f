"""The reference tables of the docs, rendered from the code at build time (one source).

An MkDocs hook (``hooks:`` in ``mkdocs.yml``): a page holding a marker line such as
``<!-- generated: options -->`` gets that line replaced by the table below it names:

- ``options``: every parameter of :func:`streamsentinel.instrument` (its signature and the
  ``Args:`` of its docstring), with its ``STREAMSENTINEL_*`` variable, what the parser of
  ``_domains.py`` accepts and the :class:`~streamsentinel._core.config.Settings` default;
- ``retry``, ``timeouts``, ``fleet``, ``telemetry``: every field of the option object of that
  parameter (``streamsentinel.config``): the flat keyword still accepted, its variable, default
  (and ``mode="observe"``'s), what it accepts, and the docstring bullet naming it;
- ``breaker``: every :class:`streamsentinel.BreakerConfig` field, its variable and default;
- ``prometheus``: every family ``instrumentation/_prometheus.py`` defines (name as exposed, type,
  labels, buckets, help);
- ``otel``: every instrument ``instrumentation/_otel_metrics.py`` creates (name, kind, unit,
  description), with the attributes and Prometheus twin noted in :data:`OTEL_NOTES`.

``python docs/gen_reference.py options`` prints one table. ``tests/kit/test_docs.py`` checks that every
option, field, family and instrument of the code is in the rendered pages.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

NONE = "\N{EN DASH}"  # an empty cell
MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.MULTILINE)

# What the OTel instruments carry beyond the common attributes, and their Prometheus family: the
# code creates the instruments, this says what they record (tests/kit/test_docs.py fails when an
# instrument is missing here or an entry names one that no longer exists).
_SEMCONV_ATTRS = (
    "`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`, "
    "`server.address`, `server.port`, `error.type` (failed/truncated only)"
)
OTEL_NOTES: dict[str, tuple[str, str]] = {
    "gen_ai.client.operation.duration": (_SEMCONV_ATTRS, ""),
    "gen_ai.client.operation.time_to_first_chunk": ("same as above", ""),
    "gen_ai.client.operation.time_per_output_chunk": (
        "same as above; one value per gap between consecutive chunks",
        "",
    ),
    "gen_ai.client.token.usage": (
        "same as above + `gen_ai.token.type` (`input`, `output`)",
        "",
    ),
    "streamsentinel.stream.requests": (
        "`streamsentinel.outcome`",
        "openai_stream_requests_total",
    ),
    "streamsentinel.stream.truncations": (
        "`streamsentinel.truncation.reason`",
        "openai_stream_truncations_total",
    ),
    "streamsentinel.stream.errors": (
        "`error.type`",
        "openai_stream_errors_total",
    ),
    "streamsentinel.stream.retries": (
        "`streamsentinel.retry.layer`, `streamsentinel.retry.reason`",
        "openai_stream_retries_total",
    ),
    "streamsentinel.stream.rate_limit_events": (
        "`streamsentinel.rate_limit.kind`",
        "openai_stream_rate_limit_events_total",
    ),
    "streamsentinel.stream.resumes": (
        "`streamsentinel.resume.strategy`, `streamsentinel.resume.result`",
        "openai_stream_resumes_total",
    ),
    "streamsentinel.stream.chunks": ("", "openai_stream_chunks_total"),
    "streamsentinel.stream.tokens": (
        "`streamsentinel.token.type` (`input`, `output`, `reasoning`, `cached_input`)",
        "openai_stream_tokens_total",
    ),
    "streamsentinel.stream.finish_reasons": (
        "`streamsentinel.finish_reason`",
        "openai_stream_finish_reasons_total",
    ),
    "streamsentinel.stream.duration": (
        "`streamsentinel.outcome` (every outcome, `rejected` included)",
        "openai_stream_duration_seconds",
    ),
    "streamsentinel.stream.time_to_first_token": (
        "",
        "openai_stream_time_to_first_token_seconds",
    ),
    "streamsentinel.stream.max_chunk_gap": (
        "",
        "openai_stream_max_chunk_gap_seconds",
    ),
    "streamsentinel.stream.rejections": (
        "`streamsentinel.reject.reason`",
        "openai_stream_rejections_total",
    ),
    "streamsentinel.breaker.transitions": (
        "`streamsentinel.breaker.name`, `streamsentinel.breaker.from_state`, "
        "`streamsentinel.breaker.to_state`",
        "openai_stream_circuit_transitions_total",
    ),
    "streamsentinel.breaker.rejected": (
        "`streamsentinel.breaker.name`",
        "openai_stream_circuit_rejected_total",
    ),
    "streamsentinel.breaker.fallbacks": (
        "`streamsentinel.breaker.name`",
        "openai_stream_circuit_fallbacks_total",
    ),
    "streamsentinel.breaker.state": (
        "`streamsentinel.breaker.name`, `streamsentinel.breaker.state` "
        "(1 for the current state, 0 for the others)",
        "openai_stream_circuit_state",
    ),
    "streamsentinel.breaker.failure_rate": (
        "`streamsentinel.breaker.name` (no point while the rate is undefined)",
        "openai_stream_circuit_failure_rate",
    ),
    "streamsentinel.breaker.slow_call_rate": (
        "`streamsentinel.breaker.name` (no point while the rate is undefined)",
        "openai_stream_circuit_slow_call_rate",
    ),
    "streamsentinel.store.errors": (
        "`streamsentinel.store.operation`",
        "openai_stream_store_errors_total",
    ),
    "streamsentinel.store.fallback": ("", "openai_stream_store_fallback"),
}


def _md(text: str) -> str:
    """reST inline markup of the docstrings as Markdown, on one line, safe in a table cell."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    return " ".join(text.split()).replace("|", "\\|")


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_row(*header), _row(*("---" for _ in header))]
    lines += [_row(*row) for row in rows]
    return "\n".join(lines)


def _code(value: object) -> str:
    if value is None:
        return "none"
    return f"`{value}`"


def docstring_args(func: Callable[..., Any]) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: name -> text (``a, b: text`` gives both)."""
    doc = inspect.getdoc(func) or ""
    section = doc.split("Args:\n", 1)[1] if "Args:\n" in doc else ""
    args: dict[str, str] = {}
    names: list[str] = []
    for line in section.splitlines():
        if line and not line.startswith(" "):
            break  # the next section, or prose after the arguments
        entry = re.match(r"^ {4}(\*{0,2}\w[\w, ]*): (.*)$", line)
        if entry:
            names = [n.strip().lstrip("*") for n in entry[1].split(",")]
            for name in names:
                args[name] = entry[2]
        elif line.startswith(" " * 8):
            for name in names:
                args[name] += " " + line.strip()
    return args


def _long(name: str) -> str:
    """A long identifier as inline code that may wrap after ``_`` and ``.`` (never inside a word)."""
    return (
        "<code>" + re.sub(r"([_.])", r"\1<wbr>", html.escape(name)) + "</code>"
    )


def _options() -> Iterator[tuple[str, str | None, str, str]]:
    """(parameter, variable or None, default, meaning with what it accepts) in signature order."""
    import streamsentinel
    from streamsentinel import config as objects
    from streamsentinel._core import config

    described = docstring_args(streamsentinel.instrument)
    for name, param in inspect.signature(
        streamsentinel.instrument
    ).parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        meaning = _md(described.get(name, ""))
        parser = config._PARSERS.get(name)
        variable: str | None = None
        default = NONE
        if parser is not None:
            variable = config.env_name(name)
            default = _code(getattr(config.DEFAULTS, name))
            meaning += f" *Accepts* {_md(parser.allowed)}."
        elif name == "breaker":
            variable = "STREAMSENTINEL_BREAKER_<FIELD>"
            default = "[below](#circuit-breaker-settings)"
            meaning += (
                " *Accepts* a `BreakerConfig` or a mapping of its fields."
            )
        elif name in objects.GROUPS:
            variable = "one per field"
            default = f"[below](#{name})"
        yield name, variable, default, meaning


def options_table() -> str:
    """Every parameter of ``instrument()``: its variable (if any), default, meaning."""
    rows = [
        (
            f"`{name}`",
            _long(variable)
            if variable and variable.isupper()
            else (variable or NONE),
            default,
            meaning,
        )
        for name, variable, default, meaning in _options()
    ]
    return _table(("parameter", "variable", "default", "meaning"), rows)


def _object_table(parameter: str) -> str:
    """Every field of one option object: the flat keyword still accepted, its variable, default
    (and ``mode="observe"``'s), and the docstring bullet naming it with what it accepts."""
    from streamsentinel import config as objects
    from streamsentinel._core import config

    cls = objects.GROUPS[parameter]
    bullets = list(_field_docs(inspect.getdoc(cls) or ""))
    flat = {
        field: option
        for option, (group, field) in objects.FLAT.items()
        if group == parameter
    }
    rows = []
    for name in objects.fields_of(cls):
        option = flat[name]
        text = next((b for b in bullets if f"``{name}``" in b), "")
        text = _md(text.removeprefix(f"``{name}``: "))
        parser = config._PARSERS.get(option)
        if parser is not None:
            variable = _long(config.env_name(option))
            default = _code(getattr(config.DEFAULTS, option))
            observe = config.MODE_DEFAULTS["observe"].get(option)
            if observe is not None and observe != getattr(
                config.DEFAULTS, option
            ):
                default += f" (observe: `{observe}`)"
            text += f" *Accepts* {_md(parser.allowed)}."
        elif option == "redis_url":
            variable, default = _long("STREAMSENTINEL_REDIS_URL"), "none"
        else:
            variable, default = NONE, "none"
        rows.append((_long(name), _long(option), variable, default, text))
    return _table(
        ("field", "flat keyword", "variable", "default", "meaning"), rows
    )


def _field_docs(doc: str) -> Iterator[str]:
    """The ``- ...`` bullets of a docstring, each joined onto one line."""
    bullet: list[str] = []
    for line in doc.splitlines():
        if line.startswith("- "):
            if bullet:
                yield " ".join(bullet)
            bullet = [line[2:].strip()]
        elif bullet and line.startswith("  "):
            bullet.append(line.strip())
        elif bullet:
            yield " ".join(bullet)
            bullet = []
    if bullet:
        yield " ".join(bullet)


def breaker_table() -> str:
    """Every ``BreakerConfig`` field: its variable, default and the docstring bullet naming it."""
    from streamsentinel import BreakerConfig
    from streamsentinel._core import config

    bullets = list(_field_docs(inspect.getdoc(BreakerConfig) or ""))
    defaults = BreakerConfig()
    rows = []
    for field in dataclasses.fields(BreakerConfig):
        text = next((b for b in bullets if f"``{field.name}``" in b), "")
        text = text.removeprefix(f"``{field.name}``: ")
        default = getattr(defaults, field.name)
        shown = "none (unused)" if default is None else _code(default)
        variable = _long(config.env_name("breaker_" + field.name))
        rows.append((_long(field.name), variable, shown, _md(text)))
    return _table(("field", "variable", "default", "meaning"), rows)


def _buckets(bounds: Sequence[float]) -> str:
    finite = [b for b in bounds if b != float("inf")]
    return f"{len(finite)} buckets, {finite[0]:g} to {finite[-1]:g} s"


def prometheus_families() -> list[Any]:
    """The families of one ``Metrics``, unregistered (their order is the definition order)."""
    from streamsentinel.instrumentation._prometheus import Metrics

    return list(Metrics(None).families)


def exposed_name(family: Any) -> str:
    """The name Prometheus shows: counters with ``_total`` (prometheus_client stores it without)."""
    name: str = family._name
    return name + "_total" if family._type == "counter" else name


def prometheus_table() -> str:
    """Every Prometheus family: exposed name, type, labels, help."""
    from streamsentinel.instrumentation._prometheus import BASE_LABELS

    rows = []
    for family in prometheus_families():
        labels = list(family._labelnames)
        if labels[: len(BASE_LABELS)] == list(BASE_LABELS):
            shown = ["base"] + [
                f"`{label}`" for label in labels[len(BASE_LABELS) :]
            ]
        else:
            shown = [f"`{label}`" for label in labels] or ["none"]
        kind = family._type
        if kind == "histogram":
            kind += f" ({_buckets(family._upper_bounds)})"
        elif kind == "gauge":
            kind += f" (`{family._multiprocess_mode}`)"
        rows.append(
            (
                _long(exposed_name(family)),
                kind,
                ", ".join(shown),
                _md(family._documentation),
            )
        )
    return _table(("metric", "type", "labels", "help"), rows)


def otel_instruments() -> list[tuple[str, str, str, str]]:
    """(name, kind, unit, description) of every instrument ``OTelMetricsSink`` creates, in order."""
    from opentelemetry.metrics import NoOpMeter, NoOpMeterProvider

    from streamsentinel.instrumentation._otel_metrics import OTelMetricsSink

    created: list[tuple[str, str, str, str]] = []

    class RecordingMeter(NoOpMeter):
        def _note(
            self, kind: str, name: str, unit: str, description: str
        ) -> None:
            created.append((name, kind, unit, description))

        def create_counter(
            self, name: str, unit: str = "", description: str = ""
        ) -> Any:
            self._note("counter", name, unit, description)
            return super().create_counter(name, unit, description)

        def create_histogram(
            self, name: str, unit: str = "", description: str = "", **kw: Any
        ) -> Any:
            self._note("histogram", name, unit, description)
            return super().create_histogram(name, unit, description, **kw)

        def create_observable_gauge(
            self,
            name: str,
            callbacks: Any = None,
            unit: str = "",
            description: str = "",
        ) -> Any:
            self._note("observable gauge", name, unit, description)
            return super().create_observable_gauge(
                name, callbacks, unit, description
            )

    class RecordingProvider(NoOpMeterProvider):
        def get_meter(
            self,
            name: str,
            version: str | None = None,
            schema_url: str | None = None,
            *a: Any,
        ) -> Any:
            return RecordingMeter(name, version=version, schema_url=schema_url)

    OTelMetricsSink(RecordingProvider(), semconv_metrics=True)
    return created


def otel_table() -> str:
    """Every OTel instrument: name, kind, unit, extra attributes, Prometheus twin, description."""
    rows = []
    for name, kind, unit, description in otel_instruments():
        attrs, twin = OTEL_NOTES.get(name, ("?", "?"))
        rows.append(
            (
                _long(name),
                f"{kind}, `{unit}`",
                attrs,
                _long(twin) if twin else "",
                _md(description),
            )
        )
    table = _table(
        (
            "instrument",
            "kind, unit",
            "attributes",
            "Prometheus twin",
            "description",
        ),
        rows,
    )
    twins = {twin for _, twin in OTEL_NOTES.values()}
    alone = [
        f"`{exposed_name(f)}`"
        for f in prometheus_families()
        if exposed_name(f) not in twins
    ]
    return (
        table
        + "\n\nPrometheus families with no OTel twin: "
        + ", ".join(alone)
        + "."
    )


TABLES: dict[str, Callable[[], str]] = {
    "options": options_table,
    "retry": lambda: _object_table("retry"),
    "timeouts": lambda: _object_table("timeouts"),
    "fleet": lambda: _object_table("fleet"),
    "telemetry": lambda: _object_table("telemetry"),
    "breaker": breaker_table,
    "prometheus": prometheus_table,
    "otel": otel_table,
}


def render(markdown: str) -> str:
    """``markdown`` with every marker line replaced by its table; an unknown marker raises KeyError."""
    return MARKER.sub(lambda m: TABLES[m[1]](), markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: fill the generated tables of a page."""
    return render(markdown)


if __name__ == "__main__":
    for table in sys.argv[1:] or list(TABLES):
        print(TABLES[table](), end="\n\n")
