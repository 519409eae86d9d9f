"""Deferred patching: ``instrument()`` patches the SDK's resource modules when the application
imports them, not before (issue 16, the import cost). Each case runs in a fresh interpreter, where
``import openai`` has not imported them yet, against the fault server over loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import streamsentinel
from streamsentinel.chaos import ChaosServer

# Every module instrument() patches that `import openai` leaves to a client's first use.
DEFERRED = [
    "openai.lib.streaming.chat._completions",
    "openai.lib.streaming.responses._responses",
    "openai.resources.chat.completions.completions",
    "openai.resources.completions",
    "openai.resources.responses.responses",
]

PRELUDE = """
import asyncio, json, sys, threading
import openai, wrapt
import streamsentinel
from streamsentinel.testing import capture, settle

BASE_URL = sys.argv[1]
DEFERRED = {deferred!r}
out = {{}}

def loaded():
    return sorted(m for m in DEFERRED if m in sys.modules)

def layers(owner, method):
    # How many FunctionWrappers are stacked on owner.method (0: the SDK's plain function).
    node, n = owner.__dict__[method], 0
    while isinstance(node, wrapt.FunctionWrapper):
        node, n = node.__wrapped__, n + 1
    return n

def patched():
    from openai.resources.chat.completions.completions import AsyncCompletions, Completions
    from openai.resources import completions as legacy
    from openai.resources.responses.responses import AsyncResponses, Responses
    from openai.lib.streaming.chat._completions import ChatCompletionStream
    from openai.lib.streaming.responses._responses import ResponseStream
    return [layers(Completions, "create"), layers(AsyncCompletions, "create"),
            layers(legacy.Completions, "create"), layers(legacy.AsyncCompletions, "create"),
            layers(Responses, "create"), layers(AsyncResponses, "retrieve"),
            layers(ChatCompletionStream, "close"), layers(ResponseStream, "close")]

CHAT = dict(model="m", messages=[{{"role": "user", "content": "hi"}}], stream=True)
TEXT = dict(model="m", prompt="hi", stream=True)
RESP = dict(model="m", input="hi", stream=True)

def stream_everything():
    client = openai.OpenAI(base_url=BASE_URL, api_key="k", max_retries=0)
    aclient = openai.AsyncOpenAI(base_url=BASE_URL, api_key="k", max_retries=0)
    types = []
    with capture() as records:
        for make, kwargs in ((client.chat.completions.create, CHAT),
                             (client.completions.create, TEXT),
                             (client.responses.create, RESP)):
            stream = make(**kwargs)
            types.append(type(stream).__name__)
            for _ in stream:
                pass
        with client.chat.completions.stream(model="m", messages=CHAT["messages"]) as helper:
            for _ in helper:
                pass

        async def run():
            for make, kwargs in ((aclient.chat.completions.create, CHAT),
                                 (aclient.completions.create, TEXT),
                                 (aclient.responses.create, RESP)):
                stream = await make(**kwargs)
                types.append(type(stream).__name__)
                async for _ in stream:
                    pass
        asyncio.run(run())
        settle()
    out["types"] = types
    out["records"] = [[r.start.operation, r.outcome, r.chunks] for r in records]
"""

SCENARIOS = {
    # instrument() after `import openai` imports none of them; each is patched on first use.
    "observed": """
streamsentinel.instrument(retry_attempts=1, done_marker="strict")
out["loaded_after_instrument"] = loaded()
stream_everything()
out["layers"] = patched()
""",
    # uninstrument() before the first use: the resources are the plain SDK.
    "uninstrumented": """
streamsentinel.instrument(retry_attempts=1)
streamsentinel.uninstrument()
out["loaded_after_instrument"] = loaded()
out["layers"] = patched()
stream_everything()
""",
    # instrument, uninstrument, instrument (and a reconfigure) before the first use: patched once.
    "again": """
streamsentinel.instrument(retry_attempts=1, done_marker="strict")
streamsentinel.uninstrument()
streamsentinel.instrument(retry_attempts=1, done_marker="strict")
streamsentinel.instrument(retry_attempts=1, done_marker="lenient")
out["loaded_after_instrument"] = loaded()
out["layers"] = patched()
stream_everything()
""",
}

# A private name moved in a deferred module (simulated: a hook registered before ours renames
# the legacy `Completions.create`): the application's import and calls go on, the module is left
# unpatched, the failure is counted once (stage "patch") and logged once.
SCENARIOS["moved"] = """
from prometheus_client import CollectorRegistry

@wrapt.when_imported("openai.resources.completions")
def rename(module):
    module.Completions._create_moved = module.Completions.create
    del module.Completions.create

registry = CollectorRegistry()
streamsentinel.instrument(retry_attempts=1, registry=registry)
from openai.resources import completions as legacy
from openai.resources.chat.completions.completions import Completions
out["layers"] = [layers(legacy.Completions, "_create_moved"), layers(legacy.AsyncCompletions, "create"),
                 layers(Completions, "create")]
out["errors"] = registry.get_sample_value(
    "openai_stream_instrumentation_errors_total", {"stage": "patch"})
"""

# Another thread is importing the resources (held inside the SDK's import, before any patched
# module exists) while this one instruments: instrument() neither waits for that import nor
# misses it; uninstrument() meanwhile leaves it plain; instrument() twice patches once.
THREADED = """
inside, release = threading.Event(), threading.Event()
waited = []

@wrapt.when_imported("openai._resource")
def hold(module):
    inside.set()
    waited.append(release.wait(timeout=60))

def use():
    client = openai.OpenAI(base_url=BASE_URL, api_key="k", max_retries=0)
    client.chat, client.completions, client.responses

importer = threading.Thread(target=use)
importer.start()
assert inside.wait(timeout=60)
{calls}
out["loaded_after_instrument"] = loaded()
release.set()
importer.join(timeout=60)
out["instrument_waited_for_the_import"] = waited != [True]
out["layers"] = patched()
stream_everything()
"""
SCENARIOS["threaded"] = THREADED.format(
    calls='streamsentinel.instrument(retry_attempts=1, done_marker="strict")'
)
SCENARIOS["threaded_uninstrumented"] = THREADED.format(
    calls="streamsentinel.instrument(retry_attempts=1); streamsentinel.uninstrument()"
)
SCENARIOS["threaded_again"] = THREADED.format(
    calls="; ".join(
        [
            'streamsentinel.instrument(retry_attempts=1, done_marker="strict")',
            "streamsentinel.uninstrument()",
            'streamsentinel.instrument(retry_attempts=1, done_marker="strict")',
        ]
    )
)

# fork() while another thread holds the patch table's lock (a resource import being patched):
# the child's lock is new, so its instrument()/uninstrument() and first use work.
SCENARIOS["fork"] = """
import os, select, signal
from streamsentinel._sdk import patching

held, release = threading.Event(), threading.Event()

def hold():
    with patching._lock:
        held.set()
        release.wait(timeout=60)

holder = threading.Thread(target=hold, daemon=True)
holder.start()
assert held.wait(timeout=60)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    streamsentinel.instrument(retry_attempts=1, done_marker="strict")
    streamsentinel.uninstrument()
    streamsentinel.instrument(retry_attempts=1, done_marker="strict")
    stream_everything()
    out["layers"] = patched()
    os.write(write, json.dumps(out).encode())
    os._exit(0)
os.close(write)
ready, _, _ = select.select([read], [], [], 60)
if not ready:
    os.kill(pid, signal.SIGKILL)
out["child"] = json.loads(os.read(read, 1 << 20) or b"null") if ready else "hung"
os.waitpid(pid, 0)
release.set()
"""

EPILOGUE = """
print("RESULT " + json.dumps(out))
"""


def _run(scenario: str, chaos: ChaosServer) -> dict[str, Any]:
    src = str(Path(streamsentinel.__file__).resolve().parents[1])  # this checkout's source
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSENTINEL_")}
    env["PYTHONPATH"] = src
    script = PRELUDE.format(deferred=DEFERRED) + SCENARIOS[scenario] + EPILOGUE
    proc = subprocess.run(
        [sys.executable, "-c", script, chaos.base_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    result: dict[str, Any] = json.loads(lines[0][len("RESULT ") :])
    result["stderr"] = proc.stderr
    return result


# The fault server's 5-chunk streams: chat 7 items (role, 5 deltas, finish), legacy 6, Responses 13.
OBSERVED = [
    ["chat", "completed", 7],
    ["text_completion", "completed", 6],
    ["responses", "completed", 13],
    ["chat", "completed", 7],  # the chat.completions.stream() helper
    ["chat", "completed", 7],
    ["text_completion", "completed", 6],
    ["responses", "completed", 13],
]
OBSERVED_TYPES = ["ObservedStream"] * 3 + ["ObservedAsyncStream"] * 3
PLAIN_TYPES = ["Stream"] * 3 + ["AsyncStream"] * 3


def test_instrument_imports_no_resource_module_and_observes_each_on_first_use(chaos: ChaosServer) -> None:
    """Issue 16: after ``import openai; instrument()`` no SDK resource module is imported; chat,
    legacy completions and Responses streams (sync and async, and the chat helper) opened after
    their first use are each observed, every method patched once."""
    result = _run("observed", chaos)
    assert result["loaded_after_instrument"] == []
    assert result["records"] == OBSERVED
    assert result["types"] == OBSERVED_TYPES
    assert result["layers"] == [1] * 8


def test_uninstrument_before_first_use_leaves_the_plain_sdk(chaos: ChaosServer) -> None:
    """Issue 16: ``instrument(); uninstrument()`` before a resource's first use: its import brings
    the plain SDK (no wrapper, plain streams, nothing recorded)."""
    result = _run("uninstrumented", chaos)
    assert result["loaded_after_instrument"] == []
    assert result["layers"] == [0] * 8
    assert result["types"] == PLAIN_TYPES
    assert result["records"] == []


def test_instrument_again_before_first_use_patches_once(chaos: ChaosServer) -> None:
    """Issue 16: instrument, uninstrument, instrument and a reconfigure before the first use: each
    method is wrapped once and each stream recorded once."""
    result = _run("again", chaos)
    assert result["loaded_after_instrument"] == []
    assert result["layers"] == [1] * 8
    assert result["records"] == OBSERVED
    assert result["types"] == OBSERVED_TYPES


def test_moved_name_in_a_deferred_module_never_breaks_the_import(chaos: ChaosServer) -> None:
    """Issue 16: a private name moved in a module patched on import: the application's import
    succeeds, that module is left unpatched (the others are patched), counted once at stage
    ``patch`` and logged once."""
    result = _run("moved", chaos)
    assert result["layers"] == [0, 0, 1]
    assert result["errors"] == 1.0
    logged = [line for line in result["stderr"].splitlines() if "instrumentation.error" in line]
    assert len(logged) == 1, result["stderr"]
    assert "stage=patch" in logged[0]
    assert "openai.resources.completions.Completions.create is missing" in logged[0]


@pytest.mark.parametrize(
    ("scenario", "layers", "types", "records"),
    [
        ("threaded", [1] * 8, OBSERVED_TYPES, OBSERVED),
        ("threaded_uninstrumented", [0] * 8, PLAIN_TYPES, []),
        ("threaded_again", [1] * 8, OBSERVED_TYPES, OBSERVED),
    ],
)
def test_import_in_another_thread_while_instrumenting(
    scenario: str, layers: list[int], types: list[str], records: list[Any], chaos: ChaosServer
) -> None:
    """Issue 16: another thread is inside the import of the resources while this one runs
    instrument()/uninstrument(): neither waits for that import, and the modules it brings are
    patched exactly as instrument()/uninstrument() left things."""
    result = _run(scenario, chaos)
    assert result["loaded_after_instrument"] == []
    assert result["instrument_waited_for_the_import"] is False
    assert result["layers"] == layers
    assert result["types"] == types
    assert result["records"] == records


def test_fork_while_another_thread_patches(chaos: ChaosServer) -> None:
    """Issue 16: a child forked while another thread holds the patch table's lock instruments,
    uninstruments and instruments again, and its resources are patched once and observed."""
    result = _run("fork", chaos)
    assert result["child"] == {"types": OBSERVED_TYPES, "records": OBSERVED, "layers": [1] * 8}
