"""Reading streamsentinel's counters back the way Prometheus does: an HTTP scrape of ``/metrics``."""

from __future__ import annotations

import urllib.request
from collections import Counter
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Scrape:
    """One scrape's samples, with sums by label."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    @classmethod
    def fetch(cls, url: str, timeout: float = 10.0) -> Scrape:
        """Scrape ``url`` (loopback ``/metrics``). Raises ``OSError`` when it cannot be read."""
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
        samples = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
        return cls(samples)

    def total(self, name: str, **match: str) -> int:
        """Sum of ``name`` over the samples whose labels include ``match``, as an int."""
        return round(
            sum(
                s.value
                for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in match.items())
            )
        )

    def by(self, name: str, label: str, **match: str) -> Counter[str]:
        """``name`` summed per value of ``label`` (zero-valued entries dropped)."""
        out: Counter[str] = Counter()
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                out[s.labels.get(label, "")] += round(s.value)
        return +out
