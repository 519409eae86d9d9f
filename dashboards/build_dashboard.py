"""Build the streamsentinel Grafana dashboard as code (grafana-foundation-sdk).

    python dashboards/build_dashboard.py           # writes dashboards/streamsentinel.json
    python dashboards/build_dashboard.py --check   # exits 1 if the committed JSON is out of date

Metric names and labels are the ones defined in ``src/streamsentinel/metrics.py``
(``tests/ops/test_dashboard.py`` checks every name used here against them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).resolve().parent / "streamsentinel.json"
UID = "streamsentinel"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Label filter of every series carrying the base labels (breaker metrics carry only ``breaker``).
F = 'server=~"$server", model=~"$model", operation=~"$operation"'
RI = "[$__rate_interval]"

# Breaker states encoded as numbers for the state timeline (value mappings turn them back to names).
BREAKER_STATES = (
    ("closed", "green"),
    ("half_open", "yellow"),
    ("open", "red"),
    ("forced_open", "dark-red"),
    ("disabled", "text"),
    ("metrics_only", "blue"),
)


def rate(metric: str, extra: str = "") -> str:
    """``rate(metric{F[, extra]}[$__rate_interval])``."""
    sel = f"{F}, {extra}" if extra else F
    return f"rate({metric}{{{sel}}}{RI})"


def quantile(q: float, metric: str, by: str = "") -> str:
    """Quantile ``q`` of a histogram over its ``_bucket`` rates."""
    grouping = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({grouping}) ({rate(metric + '_bucket')}))"


# The SDK's builders return ``typing.Self``, which mypy (python_version 3.10 in pyproject) reads as
# ``Any``; results are assigned to annotated names before being returned.


def target(expr: str, legend: str, ref_id: str) -> prometheus.Dataquery:
    query: prometheus.Dataquery = (
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(DS)
    )
    return query


def legend() -> common_builder.VizLegendOptions:
    options: common_builder.VizLegendOptions = (
        common_builder.VizLegendOptions()
        # StrEnum is 3.11+: under python_version 3.10 mypy sees its members as plain str.
        .display_mode(common.LegendDisplayMode.TABLE)  # type: ignore[arg-type, unused-ignore]
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["mean", "max", "lastNotNull"])
    )
    return options


class Builder:
    """Numbers panels in order so the generated JSON is stable."""

    def __init__(self) -> None:
        self.next_id = 1

    def _id(self) -> int:
        panel_id = self.next_id
        self.next_id += 1
        return panel_id

    def row(self, title: str) -> dash.Row:
        row: dash.Row = dash.Row(title).id(self._id())
        return row

    def ts(
        self,
        title: str,
        description: str,
        unit: str,
        targets: list[tuple[str, str]],
        *,
        width: int = 8,
        stack: bool = False,
        max_val: float | None = None,
    ) -> timeseries.Panel:
        panel: timeseries.Panel = (
            timeseries.Panel()
            .id(self._id())
            .title(title)
            .description(description)
            .unit(unit)
            .datasource(DS)
            .span(width)
            .height(8)
            .min(0)
            .fill_opacity(10)
            .legend(legend())
        )
        if max_val is not None:
            panel = panel.max(max_val)
        if stack:
            stacking = common_builder.StackingConfig().mode(
                common.StackingMode.NORMAL  # type: ignore[arg-type, unused-ignore]
            )
            panel = panel.stacking(stacking)
        for i, (expr, legend_format) in enumerate(targets):
            panel = panel.with_target(target(expr, legend_format, chr(ord("A") + i)))
        return panel

    def state_timeline(
        self, title: str, description: str, expr: str, legend_format: str
    ) -> statetimeline.Panel:
        mapping = ValueMap(
            options={
                str(i): ValueMappingResult(text=name, color=color, index=i)
                for i, (name, color) in enumerate(BREAKER_STATES)
            }
        )
        panel: statetimeline.Panel = (
            statetimeline.Panel()
            .id(self._id())
            .title(title)
            .description(description)
            .unit("none")
            .datasource(DS)
            .span(24)
            .height(8)
            .mappings([mapping])
            .show_value(common.VisibilityMode.AUTO)
            .merge_values(True)
            .with_target(target(expr, legend_format, "A"))
        )
        return panel


def query_variable(name: str, label: str) -> dash.QueryVariable:
    variable: dash.QueryVariable = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(f"label_values(openai_stream_requests_total, {name})")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        # ".*" rather than the list of values, so "All" also matches series of label values that
        # never streamed (429s and retries of non-streaming calls).
        .all_value(".*")
    )
    return variable


def build() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict."""
    b = Builder()
    requests = "openai_stream_requests_total"
    state_expr = "max by (breaker) (" + " or ".join(
        f'openai_stream_circuit_state{{state="{name}"}} * {i}' for i, (name, _) in enumerate(BREAKER_STATES)
    )
    state_expr += ")"

    d = (
        dash.Dashboard("streamsentinel: OpenAI streams")
        .uid(UID)
        .description(
            "Streaming calls of the OpenAI SDK observed by streamsentinel: traffic, truncations and "
            "failures, rate limits, retries, latency, tokens and the circuit breaker."
        )
        .tags(["streamsentinel", "openai", "llm"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(
            dash.DatasourceVariable("datasource").label("Data source").type("prometheus").multi(False)
        )
        .with_variable(query_variable("server", "Server"))
        .with_variable(query_variable("model", "Model"))
        .with_variable(query_variable("operation", "Operation"))
    )

    # --- Traffic
    d = d.with_row(b.row("Traffic"))
    d = d.with_panel(
        b.ts(
            "Requests/s by outcome",
            "Streaming requests per second by outcome (completed, truncated, failed, abandoned, "
            "rejected). A stream is counted once, when it ends; retries are not extra requests.",
            "reqps",
            [(f"sum by (outcome) ({rate(requests)})", "{{outcome}}")],
            width=16,
            stack=True,
        )
    )
    d = d.with_panel(
        b.ts(
            "In flight",
            "Streams opened and not yet ended (openai_stream_in_flight).",
            "short",
            [(f"sum(openai_stream_in_flight{{{F}}})", "in flight")],
        )
    )

    # --- Failures
    failed = rate(requests, 'outcome=~"truncated|failed"')
    d = d.with_row(b.row("Failures"))
    d = d.with_panel(
        b.ts(
            "Failure ratio",
            "(truncated + failed) / all stream requests. Truncated: the stream ended after its 200 "
            "without the terminal marker; failed: an error reached the consumer.",
            "percentunit",
            [
                (
                    f"sum({failed}) / sum({rate(requests)})",
                    "failure ratio",
                )
            ],
            max_val=1,
        )
    )
    d = d.with_panel(
        b.ts(
            "Truncations by reason",
            "Streams that ended after their 200 without the terminal marker, per second, by reason.",
            "ops",
            [(f"sum by (reason) ({rate('openai_stream_truncations_total')})", "{{reason}}")],
            stack=True,
        )
    )
    d = d.with_panel(
        b.ts(
            "Errors by error_type",
            "Failed or truncated streams per second by error_type (the README's failure taxonomy).",
            "ops",
            [(f"sum by (error_type) ({rate('openai_stream_errors_total')})", "{{error_type}}")],
            stack=True,
        )
    )

    # --- Rate limits
    d = d.with_row(b.row("Rate limits"))
    d = d.with_panel(
        b.ts(
            "Rate-limit events by kind",
            "429 responses and in-stream rate-limit errors per second by kind (requests, tokens, quota, "
            "too_large, in_stream); non-streaming calls included, as they share the quota.",
            "ops",
            [(f"sum by (kind) ({rate('openai_stream_rate_limit_events_total')})", "{{kind}}")],
            width=6,
            stack=True,
        )
    )
    for resource in ("requests", "tokens"):
        sel = f'{{{F}, resource="{resource}"}}'
        d = d.with_panel(
            b.ts(
                f"Remaining {resource}",
                f"x-ratelimit-remaining-{resource} of the latest response (solid) against "
                f"x-ratelimit-limit-{resource} (limit), per server and model.",
                "short",
                [
                    (
                        f"min by (server, model) (openai_stream_ratelimit_remaining{sel})",
                        "{{server}} {{model}}",
                    ),
                    (
                        f"max by (server, model) (openai_stream_ratelimit_limit{sel})",
                        "limit {{server}} {{model}}",
                    ),
                ],
                width=6,
            )
        )
    d = d.with_panel(
        b.ts(
            "Time to reset",
            "x-ratelimit-reset-* of the latest response: time until the quota is full again, by resource.",
            "s",
            [
                (
                    f"max by (server, model, resource) (openai_stream_ratelimit_reset_seconds{{{F}}})",
                    "{{resource}} {{server}} {{model}}",
                )
            ],
            width=6,
        )
    )

    # --- Retries
    d = d.with_row(b.row("Retries"))
    retries = "openai_stream_retries_total"
    d = d.with_panel(
        b.ts(
            "Retries by layer and reason",
            "Retries per second by layer (sdk: the OpenAI SDK's max_retries, non-streaming calls "
            "included; sentinel: streamsentinel's retries before the first output) and reason.",
            "ops",
            [(f"sum by (layer, reason) ({rate(retries)})", "{{layer}} {{reason}}")],
            width=12,
            stack=True,
        )
    )
    d = d.with_panel(
        b.ts(
            "Retries per request",
            "Retries per stream request, by layer (the sdk layer also counts retries of non-streaming "
            "calls, so it can overstate).",
            "short",
            [
                (
                    f"sum by (layer) ({rate(retries)}) / ignoring(layer) group_left() sum({rate(requests)})",
                    "{{layer}}",
                )
            ],
            width=12,
        )
    )

    # --- Latency
    d = d.with_row(b.row("Latency"))
    ttft = "openai_stream_time_to_first_token_seconds"
    d = d.with_panel(
        b.ts(
            "Time to first token",
            "p50, p95 and p99 of the time from the request to the first item carrying output "
            "(histogram_quantile over the _bucket rates).",
            "s",
            [(quantile(q, ttft), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
        )
    )
    d = d.with_panel(
        b.ts(
            "Stream duration p95 by outcome",
            "p95 of the time from the request to the end of the stream, by outcome.",
            "s",
            [(quantile(0.95, "openai_stream_duration_seconds", "outcome"), "{{outcome}}")],
        )
    )
    d = d.with_panel(
        b.ts(
            "Longest chunk gap p95",
            "p95 of the longest gap between two consecutive items of a stream (one observation per "
            "stream); a rising value points at stalls.",
            "s",
            [(quantile(0.95, "openai_stream_max_chunk_gap_seconds"), "p95")],
        )
    )

    # --- Tokens
    tokens = rate("openai_stream_tokens_total", 'token_type=~"input|output"')
    d = d.with_row(b.row("Tokens"))
    d = d.with_panel(
        b.ts(
            "Tokens/s",
            "Input and output tokens per second, from the usage reported in the streams.",
            "ops",
            [
                (
                    f"sum by (token_type) ({tokens})",
                    "{{token_type}}",
                )
            ],
            width=24,
        )
    )

    # --- Circuit breaker (label ``breaker`` only)
    d = d.with_row(b.row("Circuit breaker"))
    d = d.with_panel(
        b.state_timeline(
            "Breaker state",
            "State of each circuit breaker (key: server/model by default) from openai_stream_circuit_state: "
            "closed, half_open, open, forced_open, disabled, metrics_only.",
            state_expr,
            "{{breaker}}",
        )
    )
    d = d.with_panel(
        b.ts(
            "Transitions",
            "Circuit breaker state transitions per second, by breaker and from/to state.",
            "ops",
            [
                (
                    "sum by (breaker, from_state, to_state) "
                    f"(rate(openai_stream_circuit_transitions_total{RI}))",
                    "{{breaker}} {{from_state}} -> {{to_state}}",
                )
            ],
        )
    )
    d = d.with_panel(
        b.ts(
            "Rejected calls",
            "Calls rejected by an open breaker per second (no HTTP request made), and those served by "
            "the configured fallback instead.",
            "ops",
            [
                (
                    f"sum by (breaker) (rate(openai_stream_circuit_rejected_total{RI}))",
                    "rejected {{breaker}}",
                ),
                (
                    f"sum by (breaker) (rate(openai_stream_circuit_fallbacks_total{RI}))",
                    "fallback {{breaker}}",
                ),
            ],
        )
    )
    d = d.with_panel(
        b.ts(
            "Failure rate",
            "Failure rate and slow-call rate of each breaker's sliding window (empty below the minimum "
            "number of calls).",
            "percentunit",
            [
                (
                    "max by (breaker) (openai_stream_circuit_failure_rate)",
                    "failure {{breaker}}",
                ),
                (
                    "max by (breaker) (openai_stream_circuit_slow_call_rate)",
                    "slow {{breaker}}",
                ),
            ],
            max_val=1,
        )
    )
    d = d.with_row(b.row("Fleet (shared state in Redis)"))
    d = d.with_panel(
        b.ts(
            "Shared state store",
            "Fleet mode (README: Running a fleet). Processes running on their local state because Redis "
            "is unreachable (openai_stream_store_fallback; alert StreamStateStoreUnavailable), failed "
            "store calls per second by operation, and requests rejected without a request by reason "
            "(circuit_open, rate_limit_pause, quota_pause).",
            "short",
            [
                ("sum(openai_stream_store_fallback)", "processes on local state"),
                (
                    f"sum by (operation) (rate(openai_stream_store_errors_total{RI}))",
                    "store errors/s {{operation}}",
                ),
                (
                    f"sum by (reason) ({rate('openai_stream_rejections_total')})",
                    "rejected/s {{reason}}",
                ),
                (
                    "max by (server, model, kind) (openai_stream_rate_limit_paused)",
                    "paused {{server}} {{model}} ({{kind}})",
                ),
            ],
            width=24,
        )
    )

    result: dict[str, Any] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return result


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python dashboards/build_dashboard.py", file=sys.stderr)
            return 1
        print(f"{OUTPUT} is up to date")
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
