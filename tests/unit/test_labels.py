"""Bounded labels without I/O (``BoundedLabel`` and ``LabelSets`` of ``_core/lifecycle.py``), under
threads too."""

from __future__ import annotations

import threading

from streamsentinel._core.lifecycle import OTHER, OVERFLOW, BoundedLabel, LabelSets

# -- BoundedLabel --------------------------------------------------------------------------------


def test_bounded_label_admits_first_values() -> None:
    label = BoundedLabel(2)
    seen = [label(v) for v in "abcabdc"]
    assert seen == ["a", "b", OTHER, "a", "b", OTHER, OTHER]
    assert OTHER == "_other"


def test_bounded_label_limit_one() -> None:
    label = BoundedLabel(1)
    assert (label("x"), label("y"), label("x")) == ("x", OTHER, "x")


def test_bounded_label_under_threads() -> None:
    label = BoundedLabel(10)
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(offset: int) -> None:
        barrier.wait()
        for i in range(100):
            value = label(f"m{(i + offset) % 50}")
            with lock:
                results.append(value)

    threads = [threading.Thread(target=work, args=(n * 7,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = {v for v in results if v != OTHER}
    assert len(admitted) == 10
    # An admitted value is admitted for good: every later call returns it unchanged.
    assert all(label(v) == v for v in admitted)


def _labels(sets: LabelSets, host: str, port: int, model: str) -> tuple[str, str]:
    """What ``Runtime.stream_start`` does: the table first, ``admit`` on a miss."""
    server = sets.servers(host)
    table = sets.table(server, port)
    return table.get(model) or sets.admit(table, server, port, model)


def test_label_sets_are_bounded_as_a_whole() -> None:
    """Issue 15, defect 12: each label under its own bound, their combinations under one more."""
    sets = LabelSets(max_values=3, limit=4)
    seen = [_labels(sets, h, 443, m) for h in ("h1", "h2", "h3") for m in ("a", "b")]
    assert seen == [("a", "h1"), ("b", "h1"), ("a", "h2"), ("b", "h2"), OVERFLOW, OVERFLOW]
    assert OVERFLOW == (OTHER, OTHER)
    # Admitted combinations stay admitted; a port is another combination.
    assert _labels(sets, "h1", 443, "a") == ("a", "h1")
    assert _labels(sets, "h1", 8443, "a") == OVERFLOW
    # Known combinations are found in their server's table (one dict lookup, no lock)...
    assert sets.table("h1", 443) == {"a": ("a", "h1"), "b": ("b", "h1")}
    # ... and neither the overflow nor a server first seen once full is remembered.
    assert sets.table("h3", 443) == {}
    assert sets.table("h9", 443) == {}
    assert _labels(sets, "h9", 443, "a") == OVERFLOW
    assert sets.table("h9", 443) == {}


def test_label_sets_count_a_model_overflow_as_one_combination() -> None:
    sets = LabelSets(max_values=1, limit=3)
    assert [_labels(sets, "h", 1, m) for m in ("a", "b", "c")] == [("a", "h"), (OTHER, "h"), (OTHER, "h")]
    assert sets.table("h", 1) == {"a": ("a", "h")}  # raw names past max_model_labels: not kept


def test_label_sets_under_threads() -> None:
    """Racing first uses admit exactly ``limit`` combinations, each for good."""
    sets = LabelSets(max_values=100, limit=25)
    results: list[tuple[str, str, tuple[str, str]]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(offset: int) -> None:
        barrier.wait()
        for i in range(200):
            host, model = f"h{(i + offset) % 10}", f"m{(i * 7 + offset) % 10}"
            labels = _labels(sets, host, 443, model)
            with lock:
                results.append((host, model, labels))

    threads = [threading.Thread(target=work, args=(n * 13,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = {(host, model) for host, model, labels in results if labels != OVERFLOW}
    assert len(admitted) == 25
    assert all(labels == (model, host) for host, model, labels in results if (host, model) in admitted)
    assert all(_labels(sets, h, 443, m) == (m, h) for h, m in admitted)
    assert all(labels == OVERFLOW for h, m, labels in results if (h, m) not in admitted)
