"""The users' testing kit: ``streamsentinel.pytest_plugin``, loaded through the installed ``pytest11``
entry point. Each test writes a small user test file and runs it in a fresh pytest process
(``pytester``: no ``-p``, no conftest of this repository), over real loopback HTTP with the real SDK
against the fault server, and asserts the exact outcomes of that run."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
TESTING_PAGE = ROOT / "docs" / "testing.md"
EXAMPLE = ROOT / "tests" / "kit" / "test_user_kit_example.py"
PLUGIN_FIXTURES = {
    "streamsentinel_server",
    "streamsentinel_options",
    "streamsentinel_instrumented",
    "streamsentinel_records",
    "streamsentinel_client_options",
    "streamsentinel_client",
    "streamsentinel_async_client",
}
SUBPROCESS_TIMEOUT = 300.0  # seconds for one inner pytest run (generous: `make test-loaded`)


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """Run ``source`` as the user's test file in a new pytest process (plugins autoloaded)."""
    pytester.makepyfile(test_user=textwrap.dedent(source))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=SUBPROCESS_TIMEOUT)


def test_entry_point_loads_the_plugin(pytester: pytest.Pytester) -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "streamsentinel"]
    assert entry.value == "streamsentinel.pytest_plugin"
    result = run(
        pytester,
        """
        import streamsentinel.pytest_plugin

        def test_registered(request):
            assert request.config.pluginmanager.get_plugin("streamsentinel") is streamsentinel.pytest_plugin

        def test_no_fixture_unless_asked(request):
            assert [n for n in request.fixturenames if n.startswith("streamsentinel")] == []
        """,
    )
    result.assert_outcomes(passed=2)
    # Every fixture is prefixed (no clash with a user's `client`, `chaos`...), and all are there.
    fixtures = pytester.runpytest_subprocess("--fixtures", timeout=SUBPROCESS_TIMEOUT)
    names = {
        m[1]
        for m in re.finditer(
            r"^(\w+) -- .*streamsentinel/pytest_plugin\.py:\d+$", fixtures.stdout.str(), re.M
        )
    }
    assert names == PLUGIN_FIXTURES
    markers = pytester.runpytest_subprocess("--markers", timeout=SUBPROCESS_TIMEOUT).stdout.str()
    assert "@pytest.mark.streamsentinel(**options)" in markers
    assert "@pytest.mark.streamsentinel_client(**kwargs)" in markers


def test_importing_the_plugin_imports_nothing_heavy(tmp_path: Path) -> None:
    # It loads in every pytest session of every user: besides pytest (and pytest-asyncio, loaded
    # anyway), it imports streamsentinel's light package root and nothing else: no third-party
    # module (openai, OTel, prometheus_client...), no fault server, no instrumentation.
    probe = textwrap.dedent(
        """
        import sys
        import pytest, pytest_asyncio
        before = set(sys.modules)
        import streamsentinel.pytest_plugin
        print("\\n".join(sorted(set(sys.modules) - before)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    new = out.stdout.split()
    assert "streamsentinel.pytest_plugin" in new
    assert [m for m in new if m.partition(".")[0] != "streamsentinel"] == []
    heavy = ("streamsentinel.chaos", "streamsentinel.testing", "streamsentinel._sdk", "streamsentinel._core")
    assert [m for m in new if m.startswith(heavy)] == []


SYNC_USER_TEST = """
import openai
import pytest

import streamsentinel
from streamsentinel import StreamTruncatedError
from streamsentinel.chaos import ChaosServer, Fault, FaultPlan, FaultSpec

KW = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_scripted_faults(streamsentinel_server, streamsentinel_client, streamsentinel_records):
    assert isinstance(streamsentinel_server, ChaosServer)
    assert isinstance(streamsentinel_client, openai.OpenAI)
    assert str(streamsentinel_client.base_url).rstrip("/") == streamsentinel_server.base_url
    assert streamsentinel_client.max_retries == 0
    assert streamsentinel.is_instrumented()
    streamsentinel_server.chunks = 5
    streamsentinel_server.plan = FaultPlan(script=[FaultSpec(Fault.EOF_CHUNKED, after=3)])

    got = []
    with pytest.raises(StreamTruncatedError) as err:
        for chunk in streamsentinel_client.chat.completions.create(**KW):
            got.append(chunk.choices[0].delta.content or "")
    assert err.value.reason == "eof_before_done"
    assert "".join(got) == streamsentinel_server.expected_text(KW, chunks=2)
    stream = streamsentinel_client.chat.completions.create(**KW)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == streamsentinel_server.expected_text(KW)

    assert [(r.outcome, r.reason, r.chunks) for r in streamsentinel_records] == [
        ("truncated", "eof_before_done", 3),
        ("completed", None, 7),
    ]
    assert [r.fault for r in streamsentinel_server.wait_for_records(2)] == [Fault.EOF_CHUNKED, Fault.NONE]


def test_uninstrumented_after_the_fixture():
    assert not streamsentinel.is_instrumented()


def test_fresh_server_and_records(streamsentinel_server, streamsentinel_client, streamsentinel_records):
    # A new server per test (clean plan, no records) and a new list of records.
    assert streamsentinel_server.records == [] and streamsentinel_records == []
    for _ in streamsentinel_client.chat.completions.create(**KW):
        pass
    assert [(r.outcome, r.chunks) for r in streamsentinel_records] == [("completed", 22)]


def test_server_without_instrumentation(streamsentinel_server):
    assert not streamsentinel.is_instrumented()
    with openai.OpenAI(base_url=streamsentinel_server.base_url, api_key="k", max_retries=0) as plain:
        assert len(list(plain.chat.completions.create(**KW, extra_headers={"x-chaos-chunks": "2"}))) == 4
"""


def test_sync_client_scripted_faults_and_records(pytester: pytest.Pytester) -> None:
    run(pytester, SYNC_USER_TEST).assert_outcomes(passed=4)


ASYNC_USER_TEST = """
import openai
import pytest

from streamsentinel.chaos import Fault, FaultPlan, FaultSpec

KW = {"model": "gpt-4o-mini", "input": "hi", "stream": True}


@pytest.mark.asyncio
@pytest.mark.streamsentinel(retry_attempts=1)
async def test_reset_before_output_fails(
    streamsentinel_server, streamsentinel_async_client, streamsentinel_records
):
    assert isinstance(streamsentinel_async_client, openai.AsyncOpenAI)
    streamsentinel_server.plan = FaultPlan(script=[FaultSpec(Fault.RESET, after=0)])
    with pytest.raises(openai.APIConnectionError):
        async for _ in await streamsentinel_async_client.responses.create(**KW):
            pass
    assert [(r.outcome, r.error_type, r.sentinel_retries) for r in streamsentinel_records] == [
        ("failed", "connection_error", 0)
    ]


@pytest.mark.asyncio
@pytest.mark.streamsentinel(retry_attempts=2, retry_base_delay=0.0)
async def test_reset_before_output_is_retried(
    streamsentinel_server, streamsentinel_async_client, streamsentinel_records
):
    streamsentinel_server.chunks = 3
    streamsentinel_server.plan = FaultPlan(script=[FaultSpec(Fault.RESET, after=0)])
    events = [e.type async for e in await streamsentinel_async_client.responses.create(**KW)]
    assert events[-1] == "response.completed"
    assert [(r.outcome, r.sentinel_retries) for r in streamsentinel_records] == [("completed", 1)]
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_async_client(pytester: pytest.Pytester, mode: str) -> None:
    run(pytester, ASYNC_USER_TEST, "-o", f"asyncio_mode={mode}").assert_outcomes(passed=2)


OPTIONS_USER_TEST = """
import openai
import pytest

from streamsentinel.chaos import Fault, FaultPlan

KW = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
pytestmark = pytest.mark.streamsentinel(retry_attempts=1, on_truncation="raise")


def test_module_marker(streamsentinel_options, streamsentinel_client_options):
    assert streamsentinel_options == {"retry_attempts": 1, "on_truncation": "raise"}
    assert streamsentinel_client_options == {"api_key": "test-key", "max_retries": 0, "timeout": 10.0}


@pytest.mark.streamsentinel(on_truncation="record")
def test_closest_marker_wins(
    streamsentinel_server, streamsentinel_client, streamsentinel_records, streamsentinel_options
):
    assert streamsentinel_options == {"retry_attempts": 1, "on_truncation": "record"}
    streamsentinel_server.plan = FaultPlan(script=[Fault.EOF_CLOSE])
    for _ in streamsentinel_client.chat.completions.create(**KW):  # ends silently, as the SDK would
        pass
    assert [(r.outcome, r.reason) for r in streamsentinel_records] == [("truncated", "eof_before_done")]


@pytest.mark.streamsentinel_client(max_retries=2)
def test_sdk_retries(streamsentinel_server, streamsentinel_client, streamsentinel_records):
    assert streamsentinel_client.max_retries == 2
    streamsentinel_server.plan = FaultPlan(script=[Fault.SERVER_ERROR, Fault.SERVER_ERROR])
    for _ in streamsentinel_client.chat.completions.create(**KW):
        pass
    assert [(r.outcome, r.sdk_retries) for r in streamsentinel_records] == [("completed", 2)]


def test_no_sdk_retries_by_default(streamsentinel_server, streamsentinel_client, streamsentinel_records):
    streamsentinel_server.plan = FaultPlan(script=[Fault.SERVER_ERROR])
    with pytest.raises(openai.InternalServerError):
        streamsentinel_client.chat.completions.create(**KW)
    assert [(r.outcome, r.error_type) for r in streamsentinel_records] == [("failed", "server_error")]


@pytest.mark.streamsentinel("positional")
def test_positional_marker_is_an_error(streamsentinel_options):
    pass
"""


def test_markers_set_instrument_and_client_options(pytester: pytest.Pytester) -> None:
    result = run(pytester, OPTIONS_USER_TEST)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*TypeError: @pytest.mark.streamsentinel takes keyword arguments only*"])


ALREADY_INSTRUMENTED_CONFTEST = """
import pytest
import streamsentinel


@pytest.fixture(scope="session", autouse=True)
def instrumented_by_the_application():
    streamsentinel.instrument(on_truncation="record")
    yield
    streamsentinel.uninstrument()
"""

ALREADY_INSTRUMENTED_USER_TEST = """
import pytest
import streamsentinel

KW = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_left_as_it_is(streamsentinel_instrumented, streamsentinel_client, streamsentinel_records):
    assert streamsentinel_instrumented is False
    cut = {"x-chaos-fault": "eof_close"}
    for _ in streamsentinel_client.chat.completions.create(**KW, extra_headers=cut):
        pass  # on_truncation="record", the application's option
    assert [(r.outcome, r.reason) for r in streamsentinel_records] == [("truncated", "eof_before_done")]


@pytest.mark.streamsentinel(on_truncation="record")
def test_same_options_are_accepted(streamsentinel_instrumented):
    assert streamsentinel_instrumented is False


@pytest.mark.streamsentinel(on_truncation="raise")
def test_other_options_are_an_error(streamsentinel_records):
    pass


def test_still_instrumented():
    assert streamsentinel.is_instrumented()
"""


def test_already_instrumented_is_left_alone(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(ALREADY_INSTRUMENTED_CONFTEST)
    result = run(pytester, ALREADY_INSTRUMENTED_USER_TEST)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: streamsentinel is already instrumented with*"])


def test_relay_example_passes_as_a_user_file(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example of docs/testing.md, outside this repository's conftest (examples/ importable from root).
    pytester.makepyfile(test_relay=EXAMPLE.read_text())
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=SUBPROCESS_TIMEOUT)
    result.assert_outcomes(passed=2)


def test_docs_show_the_example_verbatim() -> None:
    blocks = re.findall(r"```python\n(.*?)```", TESTING_PAGE.read_text(), re.S)
    assert EXAMPLE.read_text() in blocks
