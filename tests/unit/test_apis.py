"""The API adapter table: one adapter per ``Operation``, and the instrumentation's semconv table
(which may not import the core) saying what the adapters say."""

from __future__ import annotations

import typing

from streamsentinel._core.apis import ADAPTERS
from streamsentinel._vocab import Operation
from streamsentinel.instrumentation import _otel_metrics, _semconv


def test_one_adapter_per_operation() -> None:
    assert set(ADAPTERS) == set(typing.get_args(Operation))
    assert all(adapter.operation == operation for operation, adapter in ADAPTERS.items())


def test_semconv_operation_agrees_with_the_adapters() -> None:
    for operation, adapter in ADAPTERS.items():
        assert _semconv.operation_name(operation) == adapter.semconv_operation
        assert _otel_metrics.SEMCONV_OPERATION[operation] == adapter.semconv_operation


def test_completeness_and_resume_by_adapter() -> None:
    table = {op: (a.terminal_event, a.done_marker, a.continuable) for op, a in ADAPTERS.items()}
    assert table == {
        "chat": (False, True, False),
        "text_completion": (False, True, False),
        "responses": (True, False, True),
    }
