"""Fault-injecting OpenAI-compatible HTTP server for tests and demos.

`ChaosServer` answers the real openai SDK over loopback HTTP/1.1 and breaks each stream the way a
`FaultPlan` says; `FAULT_TABLE` says what each `Fault` means for a client, and
`ChaosServer.records` is the ground truth of what was sent.
"""

from .faults import (
    FAULT_TABLE,
    Fault,
    FaultInfo,
    Outcome,
    Phase,
    RateLimitKind,
    TruncationReason,
    expected_outcome,
)
from .plan import (
    CHAOS_HEADERS,
    Decision,
    DecisionSource,
    FaultPlan,
    FaultSpec,
    HeaderError,
    fault_names,
    parse_fault,
    parse_fault_weights,
)
from .ratelimit import RateLimitConfig, go_duration
from .records import RequestRecord
from .replay import Recording, load_recordings
from .server import ChaosServer
from .streaming import DEFAULT_AFTER
from .text import DEFAULT_CHUNKS, expected_pieces, expected_text

__all__ = [
    "CHAOS_HEADERS",
    "DEFAULT_AFTER",
    "DEFAULT_CHUNKS",
    "FAULT_TABLE",
    "ChaosServer",
    "Decision",
    "DecisionSource",
    "Fault",
    "FaultInfo",
    "FaultPlan",
    "FaultSpec",
    "HeaderError",
    "Outcome",
    "Phase",
    "RateLimitConfig",
    "RateLimitKind",
    "Recording",
    "RequestRecord",
    "TruncationReason",
    "expected_outcome",
    "expected_pieces",
    "expected_text",
    "fault_names",
    "go_duration",
    "load_recordings",
    "parse_fault",
    "parse_fault_weights",
]
