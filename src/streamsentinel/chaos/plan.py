"""Which fault each incoming HTTP request gets.

Precedence, per request: `x-chaos-*` request headers, else the next scripted `FaultSpec`, else a
seeded random draw from the weights. The plan is consulted once per HTTP request, so an SDK retry
is a new request with a fresh decision.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .faults import Fault, Named

__all__ = [
    "CHAOS_HEADERS",
    "Decision",
    "DecisionSource",
    "FaultPlan",
    "FaultSpec",
    "HeaderError",
    "fault_names",
    "parse_fault",
    "parse_fault_weights",
]

CHAOS_HEADERS = (
    "x-chaos-fault",
    "x-chaos-after",
    "x-chaos-error-code",
    "x-chaos-finish-reason",
    "x-chaos-chunks",
    "x-chaos-stall-seconds",
    "x-chaos-retry-after-ms",
    "x-chaos-replay",
    "x-chaos-cut-bytes",
    "x-chaos-tool-call",
    "x-chaos-no-done",
    "x-chaos-fail-first",
)
"""Request headers that pin the fault of one request (any of them present: headers win)."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What to do with one HTTP request.

    Attributes:
        fault: the wire behaviour.
        after: payload data events written before the fault strikes. None: the API's default, three
            content events in (chat 4 = role + 3, completions 3, responses 7 = 4 preamble + 3).
            Clamped so a fault always strikes before [DONE] / the terminal Responses event.
        error_code: `code` of injected error events (`server_error`, `rate_limit_exceeded`,
            `insufficient_quota`, ...).
        finish_reason: finish reason of a clean stream (`stop`, `length`, `content_filter`,
            `tool_calls`). Responses: `length` / `content_filter` end with `response.incomplete`.
        chunks: content pieces per choice; None: the server's default (20).
        stall_seconds: how long stalls last at most before the server closes the connection, seconds.
        retry_after_ms: `retry-after-ms` on 429 responses, milliseconds (`retry-after` is its ceiling
            in whole seconds).
        replay: name of a recording to serve instead of generated events.
        cut_bytes: `partial_event`: bytes of the cut event written (None: all but its blank line);
            `fin_in_chunk`: bytes of the announced chunk written before FIN (None: half).
        tool_call: chat only: stream one tool call whose arguments arrive in `chunks` pieces.
        no_done: chat/completions: never write `data: [DONE]` (the stream ends cleanly after the
            finish chunk and the usage chunk), as some OpenAI-compatible servers do.
    """

    fault: Fault = Fault.NONE
    after: int | None = None
    error_code: str = "server_error"
    finish_reason: str | None = None
    chunks: int | None = None
    stall_seconds: float = 30.0
    retry_after_ms: int = 5
    replay: str | None = None
    cut_bytes: int | None = None
    tool_call: bool = False
    no_done: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fault", Fault(self.fault))
        if self.after is not None and self.after < 0:
            raise ValueError(f"after must be >= 0, got {self.after}")
        if self.chunks is not None and self.chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {self.chunks}")
        if self.stall_seconds < 0 or self.retry_after_ms < 0:
            raise ValueError("stall_seconds and retry_after_ms must be >= 0")
        if self.cut_bytes is not None and self.cut_bytes < 0:
            raise ValueError(f"cut_bytes must be >= 0, got {self.cut_bytes}")

    def with_(self, **changes: object) -> FaultSpec:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class DecisionSource(Named):
    """Which rule of the plan chose the spec."""

    HEADER = "header"
    SCRIPT = "script"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class Decision:
    """A plan's answer for one request."""

    spec: FaultSpec
    source: DecisionSource


class HeaderError(ValueError):
    """An `x-chaos-*` header has a value the plan cannot use (the server answers 400)."""


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off/""`` -> False (any case). Raises ValueError."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def _parse_bool(value: str) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        raise HeaderError(f"not a boolean: {value!r}") from None


def fault_names() -> str:
    """Every fault name, comma-separated (for help texts and error messages)."""
    return ", ".join(fault.value for fault in Fault)


def parse_fault(name: str) -> Fault:
    """A fault by its name. Raises ValueError naming every valid fault."""
    try:
        return Fault(name.strip())
    except ValueError:
        raise ValueError(f"unknown fault {name.strip()!r} (faults: {fault_names()})") from None


def parse_fault_weights(text: str) -> dict[Fault, float]:
    """Parse `none=80,reset=5,...` into `{Fault.NONE: 80.0, Fault.RESET: 5.0}`."""
    weights: dict[Fault, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected FAULT=WEIGHT, got {item!r}")
        fault = parse_fault(name)
        try:
            weights[fault] = float(value)
        except ValueError:
            raise ValueError(f"bad fault weight {item!r}: not a number") from None
    return weights


_DEFAULT_MIX: Mapping[Fault, float] = {
    Fault.NONE: 70,
    Fault.EOF_CHUNKED: 2,
    Fault.EOF_CLOSE: 2,
    Fault.PARTIAL_EVENT: 2,
    Fault.FIN_IN_CHUNK: 2,
    Fault.RESET: 2,
    Fault.STALL_BEFORE_HEADERS: 1,
    Fault.STALL_BEFORE_FIRST_TOKEN: 1,
    Fault.STALL_MID_STREAM: 2,
    Fault.ERROR_EVENT: 2,
    Fault.ERROR_EVENT_FLAT: 1,
    Fault.MALFORMED_JSON: 1,
    Fault.JSON_BODY_200: 1,
    Fault.RATE_LIMIT_REQUESTS: 4,
    Fault.RATE_LIMIT_TOKENS: 2,
    Fault.INSUFFICIENT_QUOTA: 1,
    Fault.REQUEST_TOO_LARGE: 1,
    Fault.SERVER_ERROR: 3,
}


@dataclass
class FaultPlan:
    """Decides the `FaultSpec` of every incoming HTTP request. Thread-safe.

    Attributes:
        weights: `{Fault: weight}` for the random draw; empty means always `template` (`none`).
        script: specs consumed one per request in arrival order before random draws start.
        seed: seeds the draws. A request with an `x-client-request-id` header gets a draw that is a
            function of (seed, that id, its attempt number) alone, so the same seed gives every
            logical request the same faults whatever order concurrent requests arrive in; other
            requests draw in arrival order (same seed, same sequence).
        template: the spec that header values, scripted faults and draws are laid over.
        after_range: if set, random draws also draw `after` uniformly from `[lo, hi]`.
        replay: serve the server's recordings round-robin (per API) when the spec names none.
        fail_first: the first `fail_first` requests decided by the plan (not by headers) get
            `fail_fault`; then the script and the draws go on as usual (no weights: they succeed).
        fail_fault: the fault of those first requests.
        no_done: every chat/completions stream of the server ends without `data: [DONE]` (as some
            vLLM and MLX builds do); per request: `x-chaos-no-done: 1`.
    """

    weights: Mapping[Fault, float] = field(default_factory=dict)
    script: Iterable[FaultSpec | Fault] = ()
    seed: int = 0
    template: FaultSpec = field(default_factory=FaultSpec)
    after_range: tuple[int, int] | None = None
    replay: bool = False
    fail_first: int = 0
    fail_fault: Fault = Fault.SERVER_ERROR
    no_done: bool = False
    _queue: deque[FaultSpec] = field(init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _attempts: OrderedDict[str, int] = field(init=False, repr=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if self.fail_first < 0:
            raise ValueError(f"fail_first must be >= 0, got {self.fail_first}")
        self.fail_fault = Fault(self.fail_fault)
        self.weights = {Fault(f): float(w) for f, w in self.weights.items() if w > 0}
        failing = [self.template.with_(fault=self.fail_fault)] * self.fail_first
        self._queue = deque(
            [
                *failing,
                *(
                    item if isinstance(item, FaultSpec) else self.template.with_(fault=Fault(item))
                    for item in self.script
                ),
            ]
        )
        self._rng = random.Random(self.seed)

    @classmethod
    def default(cls, seed: int = 0, *, stall_seconds: float = 3.0) -> FaultPlan:
        """A demo mix: ~70% clean, some of every fault; stalls of `stall_seconds` (longer than a
        ~1 s client read timeout), 429s asking for a 5 ms wait, `after` drawn from 1..8."""
        return cls(
            weights=_DEFAULT_MIX,
            seed=seed,
            template=FaultSpec(stall_seconds=stall_seconds, retry_after_ms=5),
            after_range=(1, 8),
        )

    @property
    def pending_script(self) -> int:
        """Scripted specs not consumed yet."""
        with self._lock:
            return len(self._queue)

    def decide(self, headers: Mapping[str, str]) -> Decision:
        """The spec for one request; `headers` are the request's headers with lower-case names.

        Raises:
            HeaderError: an `x-chaos-*` header has an unusable value.
        """
        if any(name in headers for name in CHAOS_HEADERS):
            decision = Decision(self._from_headers(headers), DecisionSource.HEADER)
        elif "x-client-request-id" in headers and not self.pending_script and self.weights:
            key = f"{headers['x-client-request-id']}\x00{self._attempt(headers)}"
            decision = self.draw(key)
        else:
            decision = self.draw()
        if self.no_done and not decision.spec.no_done:
            decision = Decision(decision.spec.with_(no_done=True), decision.source)
        return decision

    def draw(self, key: str | None = None) -> Decision:
        """The next scripted spec, else a random draw (ignores headers): the next of the plan's
        sequence, or, with ``key``, the one that (seed, key) alone decides."""
        with self._lock:
            if self._queue:
                return Decision(self._queue.popleft(), DecisionSource.SCRIPT)
            if not self.weights:
                return Decision(self.template, DecisionSource.RANDOM)
            # A str seed is hashed with SHA-512 by random.seed: the same in every process and run.
            rng = self._rng if key is None else random.Random(f"{self.seed}\x00{key}")
            faults = list(self.weights)
            fault = rng.choices(faults, weights=[self.weights[f] for f in faults])[0]
            spec = self.template.with_(fault=fault)
            if self.after_range is not None and fault is not Fault.NONE:
                spec = spec.with_(after=rng.randint(*self.after_range))
            return Decision(spec, DecisionSource.RANDOM)

    def _from_headers(self, headers: Mapping[str, str]) -> FaultSpec:
        def get_int(name: str) -> int | None:
            value = headers.get(name)
            if value is None:
                return None
            try:
                return int(value)
            except ValueError:
                raise HeaderError(f"{name}: not an integer: {value!r}") from None

        try:
            changes: dict[str, object] = {"fault": parse_fault(headers.get("x-chaos-fault", "none"))}
        except ValueError as err:
            raise HeaderError(f"x-chaos-fault: {err}") from None
        for name, attr in (
            ("x-chaos-after", "after"),
            ("x-chaos-chunks", "chunks"),
            ("x-chaos-retry-after-ms", "retry_after_ms"),
            ("x-chaos-cut-bytes", "cut_bytes"),
        ):
            number = get_int(name)
            if number is not None:
                changes[attr] = number
        for name, attr in (
            ("x-chaos-error-code", "error_code"),
            ("x-chaos-finish-reason", "finish_reason"),
            ("x-chaos-replay", "replay"),
        ):
            if name in headers:
                changes[attr] = headers[name].strip()
        if "x-chaos-stall-seconds" in headers:
            try:
                changes["stall_seconds"] = float(headers["x-chaos-stall-seconds"])
            except ValueError:
                raise HeaderError("x-chaos-stall-seconds: not a number") from None
        if "x-chaos-tool-call" in headers:
            changes["tool_call"] = _parse_bool(headers["x-chaos-tool-call"])
        if "x-chaos-no-done" in headers:
            changes["no_done"] = _parse_bool(headers["x-chaos-no-done"])
        fail_first = get_int("x-chaos-fail-first")
        if fail_first is not None:
            if fail_first < 0:
                raise HeaderError(f"x-chaos-fail-first must be >= 0, got {fail_first}")
            if self._attempt(headers) >= fail_first:
                changes["fault"] = Fault.NONE
            elif "x-chaos-fault" not in headers:
                changes["fault"] = self.fail_fault
        try:
            return self.template.with_(**changes)
        except ValueError as err:
            raise HeaderError(str(err)) from None

    _MAX_TRACKED_IDS = 10_000

    def _attempt(self, headers: Mapping[str, str]) -> int:
        """Which attempt of its logical request this is, from 0: earlier requests with the same
        `x-client-request-id` (the SDK's and streamsentinel's retries repeat it); without that
        header, the SDK's `x-stainless-retry-count`."""
        request_id = headers.get("x-client-request-id")
        if request_id is None:
            retry = headers.get("x-stainless-retry-count", "0").strip()
            return int(retry) if retry.isdigit() else 0
        with self._lock:
            attempt = self._attempts.pop(request_id, 0)
            self._attempts[request_id] = attempt + 1
            while len(self._attempts) > self._MAX_TRACKED_IDS:
                self._attempts.popitem(last=False)
            return attempt
