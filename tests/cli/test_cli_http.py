"""The `duraray` commands over a hub's HTTP API (`--url`), against an in-process hub whose
API uvicorn serves on a free loopback port in a thread (as `duraray serve` builds it).

The read commands must print exactly what they print through the Python client; a
command over HTTP imports no Ray (checked in a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner, Result

import duraray as dr
from duraray.runtime.cli import _app as cli
from duraray.runtime.cli._http import HttpHubClient
from duraray.runtime.http import create_app
from duraray.testing import ManualClock, run_in_process

app = dr.App("cli-http-tests")

TOKEN = "s3cret-token"

#: Seconds any wait of these tests may take before it counts as a failure.
TIMEOUT = 10.0


@app.activity
def double(ctx: dr.ActivityContext, value: int) -> int:
    return value * 2


@app.activity
def explode(ctx: dr.ActivityContext, message: str) -> None:
    raise RuntimeError(message)


@app.orchestration
def doubler(ctx: dr.OrchestrationContext, value: int):
    return (yield ctx.call_activity(double, input=value))


@app.orchestration
def failing(ctx: dr.OrchestrationContext, message: str):
    yield ctx.call_activity(explode, input=message)


@app.orchestration
def waiter(ctx: dr.OrchestrationContext, _: Any = None):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def rich_output(ctx: dr.OrchestrationContext, _: Any = None):
    return {"when": ctx.current_utc_datetime, "raw": b"\x00\x01", "pair": (1, 2)}


@app.orchestration
def busy(ctx: dr.OrchestrationContext, _: Any = None):
    """Writes most kinds of history event: timers, entity calls and locks, signals, a
    sub-orchestration, an event sent and one received."""
    yield ctx.create_timer(timedelta(seconds=5))
    counter = dr.EntityId("counter", "busy")
    with (yield ctx.lock_entities([counter])):
        yield ctx.call_entity(counter, "add", 2)
    ctx.signal_entity(counter, "add", 1)
    doubled = yield ctx.call_sub_orchestrator(doubler, input=3)
    ctx.send_event(ctx.instance_id, "self", data=doubled)
    return (yield ctx.wait_for_external_event("self"))


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)


Invoke = Callable[..., Result]


@contextlib.contextmanager
def _serve(asgi_app: Any) -> Iterator[str]:
    """Serve ``asgi_app`` on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the port is ours from here on: no race for it
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        asgi_app, log_level="warning", lifespan="off", ws="none", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start serving within the bound")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=TIMEOUT)
        sock.close()


@contextlib.contextmanager
def _hub() -> Iterator[tuple[dr.Client, str]]:
    """A fresh in-process hub, its API served as `duraray serve` builds it on loopback."""
    with (
        run_in_process(app, clock=ManualClock(auto_advance=True)) as client,
        _serve(create_app(client, bind_host="127.0.0.1")) as url,
    ):
        yield client, url


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[dr.Client, str]]:
    """One in-process hub for the module (tests use their own instance ids), served."""
    with _hub() as running:
        yield running


@pytest.fixture
def client(served: tuple[dr.Client, str]) -> dr.Client:
    return served[0]


@pytest.fixture
def url(served: tuple[dr.Client, str]) -> str:
    return served[1]


def _runner() -> CliRunner:
    # Without $DURARAY_URL or tokens from the caller's environment.
    env: dict[str, str | None] = dict.fromkeys(
        ("DURARAY_URL", "DURARAY_TOKEN", "DURARAY_HTTP_TOKEN")
    )
    return CliRunner(env=env)


@pytest.fixture
def http(url: str) -> Invoke:
    """`duraray --url URL ARGS...` (``env`` sets environment variables)."""

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return _runner().invoke(cli.main, ["--url", url, *args], env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def local(client: dr.Client) -> Invoke:
    """`duraray ARGS...` through the Python client of the same hub."""

    def invoke(*args: str) -> Result:
        obj = {"client_factory": lambda: client}
        return _runner().invoke(cli.main, list(args), obj=obj, catch_exceptions=False)

    return invoke


def parsed(result: Result) -> Any:
    return json.loads(result.stdout)


def completed(client: dr.Client, orchestration: Any, value: Any, instance_id: str) -> str:
    iid = client.schedule_new_orchestration(orchestration, input=value, instance_id=instance_id)
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    return iid


def started_waiter(client: dr.Client, instance_id: str) -> str:
    iid = client.schedule_new_orchestration(waiter, instance_id=instance_id)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    return iid


def poll(probe: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {TIMEOUT} s; last value: {value!r}")
        time.sleep(0.005)


# -- the same output as through the Python client -------------------------------------------


def test_read_commands_print_the_same_over_http(
    client: dr.Client, http: Invoke, local: Invoke
) -> None:
    """status, history, list, entity and parked print over HTTP exactly what they print
    through the Python client, for people and with --json."""
    completed(client, doubler, 21, "same/done")
    completed(client, failing, "boom", "same/failed")
    completed(client, rich_output, None, "same/rich")
    completed(client, busy, None, "same/busy")
    started_waiter(client, "same/running")
    client.signal_entity(dr.EntityId("counter", "same"), "add", 4)
    poll(lambda: client.get_entity(dr.EntityId("counter", "same")), lambda m: m is not None)
    commands = [
        ("status", "same/done"),
        ("status", "same/failed"),
        ("status", "same/rich"),
        ("status", "same/running"),
        ("history", "same/done"),
        ("history", "same/failed"),
        ("history", "same/busy"),
        ("list", "--prefix", "same/"),
        ("list", "--prefix", "same/", "--status", "COMPLETED", "--top", "1"),
        ("entity", "@counter@same"),
        ("entity", "--list", "--name", "counter"),
        ("parked",),
    ]
    for command in commands:
        for args in (command, (*command, "--json")):
            over_http, direct = http(*args), local(*args)
            expected = (direct.exit_code, direct.stdout, direct.stderr)
            assert expected == (over_http.exit_code, over_http.stdout, over_http.stderr), args


# -- commands that change things ---------------------------------------------------------------


def test_an_id_with_a_slash_goes_through_every_command(client: dr.Client, http: Invoke) -> None:
    """An id holding "/" (and " ", "?", "%") is percent-encoded: schedule, raise, status,
    history, restart and purge all reach it."""
    iid = "tenant/7 a?b%c"
    result = http("schedule", "waiter", "--id", iid, "--json")
    expected: Any = {"instance_id": iid, "name": "waiter"}
    assert expected == parsed(result)
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    expected = 0
    assert expected == http("raise", iid, "go", "--data", '"hi"').exit_code
    result = http("status", iid, "--wait", "--timeout", str(TIMEOUT), "--json")
    expected = (0, iid, "COMPLETED", "hi")
    data = parsed(result)
    assert expected == (
        result.exit_code,
        data["instance_id"],
        data["runtime_status"],
        data["output"],
    )
    assert "EventRaised" in http("history", iid).stdout
    assert f"restarted instance {iid!r} as {iid!r}" in http("restart", iid).stdout
    client.raise_orchestration_event(iid, "go", data="again")
    client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_purge = {"instance_id": iid, "deleted_instance_count": 1}
    assert expected_purge == parsed(http("purge", iid, "--json"))
    assert client.get_orchestration_state(iid) is None


def test_schedule_wait_prints_the_final_state(http: Invoke) -> None:
    """`schedule NAME --wait` starts the instance and waits for it over HTTP."""
    result = http("schedule", "doubler", "--input", "5", "--id", "sched-1", "--wait", "--json")
    expected = (0, "COMPLETED", 10)
    data = parsed(result)
    assert expected == (result.exit_code, data["runtime_status"], data["output"])


def test_status_wait_on_a_failed_instance_exits_1(client: dr.Client, http: Invoke) -> None:
    """After a wait, an instance that FAILED exits 1 and shows its failure."""
    client.schedule_new_orchestration(failing, input="boom", instance_id="wait-f")
    result = http("status", "wait-f", "--wait", "--timeout", str(TIMEOUT))
    expected = 1
    assert expected == result.exit_code
    assert "<- RuntimeError: boom" in result.stdout


def test_status_wait_times_out_with_124(client: dr.Client, http: Invoke) -> None:
    """Waiting past --timeout exits 124 and says the instance's status."""
    started_waiter(client, "wait-t")
    result = http("status", "wait-t", "--wait", "--timeout", "0.2")
    expected = 124
    assert expected == result.exit_code
    assert "RUNNING" in result.stderr


def test_suspend_resume_and_terminate(client: dr.Client, http: Invoke) -> None:
    """The lifecycle commands change the instance as over Ray; terminating a finished
    instance changes nothing (exit 0)."""
    iid = started_waiter(client, "life-1")
    assert "suspended instance 'life-1'" in http("suspend", iid, "--reason", "maintenance").stdout
    expected = "SUSPENDED"
    assert expected == parsed(http("status", iid, "--json"))["runtime_status"]
    assert "resumed instance 'life-1'" in http("resume", iid).stdout
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    result = http("terminate", iid, "--reason", '"enough"')
    assert "terminated instance 'life-1'" in result.stdout
    state = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    expected_final = (dr.OrchestrationStatus.TERMINATED, "enough")
    assert expected_final == (state.runtime_status, state.output)
    assert "nothing to do" in http("terminate", iid).stdout


def test_rewind_reruns_a_failed_instance(client: dr.Client, http: Invoke) -> None:
    """`rewind` of a failed instance is accepted; of one that did not fail, exit 4."""
    completed(client, failing, "boom", "rw-1")
    expected = 0
    assert expected == http("rewind", "rw-1").exit_code
    completed(client, doubler, 1, "rw-2")
    result = http("rewind", "rw-2")
    expected = 4
    assert expected == result.exit_code


def test_signal_then_show_the_entity(client: dr.Client, http: Invoke) -> None:
    """`signal` over HTTP reaches the entity; `entity` shows its state."""
    result = http("signal", "@counter@sig", "add", "--input", "5", "--json")
    expected: Any = {"entity_id": "@counter@sig", "operation": "add", "signalled": True}
    assert expected == parsed(result)
    poll(lambda: client.get_entity(dr.EntityId("counter", "sig")), lambda m: m is not None)
    expected = {"entity_id": "@counter@sig", "state": 5, "backlog_queue_size": 0}
    data = parsed(http("entity", "@counter@sig", "--json"))
    assert expected == {k: data[k] for k in expected}


def test_purge_by_filters_deletes_finished_instances(http: Invoke) -> None:
    """`purge --status ...` (no --created-from: the API needs one, 1970 is sent) deletes the
    matching finished instances of its own hub."""
    with _hub() as (client, url):
        completed(client, doubler, 1, "p-1")
        completed(client, failing, "x", "p-2")
        started_waiter(client, "p-3")
        args = ["--url", url, "purge", "--status", "COMPLETED", "--status", "FAILED", "--json"]
        result = _runner().invoke(cli.main, args, catch_exceptions=False)
        expected = (0, {"deleted_instance_count": 2})
        assert expected == (result.exit_code, parsed(result))
        assert [s.instance_id for s in client.get_all_instances()] == ["p-3"]
        result = _runner().invoke(cli.main, args, catch_exceptions=False)
        expected = (0, {"deleted_instance_count": 0})
        assert expected == (result.exit_code, parsed(result))


def test_list_pages_past_the_apis_limit() -> None:
    """A page larger than the API's 1,000 is read in several requests."""
    with _hub() as (client, url):
        client.schedule_new_orchestrations(waiter, [None] * 1003)
        page = HttpHubClient(url).query_instances(page_size=1002, fetch_payloads=False)
        expected = (1002, True)
        assert expected == (len(page.items), page.continuation_token is not None)
        expected_all = 1003
        assert expected_all == len(HttpHubClient(url).get_all_instances())


# -- errors ----------------------------------------------------------------------------------


def test_unknown_instance_exits_3(http: Invoke) -> None:
    """A 404 is "not found", exit 3, for reads and writes alike."""
    for args in (("status", "nope"), ("history", "nope"), ("raise", "nope", "go")):
        result = http(*args)
        expected = 3
        assert expected == result.exit_code, args
        assert "no orchestration instance with id 'nope'" in result.stderr
    assert "no entity with id @counter@nope" in http("entity", "@counter@nope").stderr


def test_conflicts_exit_4(client: dr.Client, http: Invoke) -> None:
    """A running id (409) and an event on a finished instance (410) exit 4."""
    started_waiter(client, "busy")
    expected = 4
    assert expected == http("schedule", "waiter", "--id", "busy").exit_code
    completed(client, doubler, 2, "over")
    assert expected == http("raise", "over", "go").exit_code
    result = http("purge", "busy", "--json")
    assert expected == result.exit_code
    expected_kind = "conflict"
    assert expected_kind == json.loads(result.stderr)["error"]["kind"]


def test_a_token_is_needed_where_the_server_wants_one(client: dr.Client) -> None:
    """Without the token: 401, exit 5 with a message naming --token; with --token,
    $DURARAY_TOKEN or $DURARAY_HTTP_TOKEN the command works."""
    completed(client, doubler, 3, "tok-1")
    with _serve(create_app(client, token=TOKEN, bind_host="127.0.0.1")) as url:
        result = _runner().invoke(cli.main, ["--url", url, "status", "tok-1"])
        expected = 5
        assert expected == result.exit_code
        assert "--token" in result.stderr
        runs = [
            _runner().invoke(cli.main, ["--url", url, "--token", TOKEN, "status", "tok-1"]),
            _runner().invoke(cli.main, ["status", "tok-1", "--url", url, "--token", TOKEN]),
            _runner().invoke(
                cli.main, ["--url", url, "status", "tok-1"], env={"DURARAY_TOKEN": TOKEN}
            ),
            _runner().invoke(
                cli.main, ["status", "tok-1"], env={"DURARAY_URL": url, "DURARAY_HTTP_TOKEN": TOKEN}
            ),
        ]
        expected_codes = [0, 0, 0, 0]
        assert expected_codes == [r.exit_code for r in runs]
        assert all("COMPLETED" in r.stdout for r in runs)


def test_a_url_nothing_answers_at_exits_5() -> None:
    """Nothing listening at --url: "hub unreachable", exit 5."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = _runner().invoke(cli.main, ["--url", url, "list"])
    expected = 5
    assert expected == result.exit_code
    assert "hub unreachable" in result.stderr


def test_a_url_that_is_not_the_api_exits_5(url: str) -> None:
    """A server that answers, but not as the API (here: a wrong path), is named as such."""
    result = _runner().invoke(cli.main, ["--url", f"{url}/elsewhere", "list"])
    expected = 5
    assert expected == result.exit_code
    assert "does not answer as a duraray HTTP API" in result.stderr


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host", "http://", "http://h/?x=1"])
def test_a_malformed_url_exits_2(url: str) -> None:
    """--url must be an http(s) address without a query."""
    result = _runner().invoke(cli.main, ["--url", url, "list"])
    expected = 2
    assert expected == result.exit_code
    assert "--url" in result.stderr


def test_an_entity_key_with_a_slash_is_refused_over_http(http: Invoke) -> None:
    """The entity routes cannot carry "/" in a name or key: bad input, exit 2, naming --hub."""
    result = http("signal", "@counter@a/b", "add")
    expected = 2
    assert expected == result.exit_code
    assert "--hub" in result.stderr


# -- which hub ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("start",), ("stop",), ("serve",), ("start", "--data-dir", "x")],
)
def test_commands_that_need_ray_say_so(url: str, args: tuple[str, ...]) -> None:
    """start, stop and serve with only --url: usage error naming --hub/--app and --url."""
    result = _runner().invoke(cli.main, ["--url", url, *args])
    expected = 2
    assert expected == result.exit_code
    assert "not over a hub's HTTP API (--url" in result.stderr


def test_url_with_hub_is_a_usage_error(url: str) -> None:
    """--url and --hub name two hubs: exit 2."""
    result = _runner().invoke(cli.main, ["--url", url, "--hub", "h", "list"])
    expected = 2
    assert expected == result.exit_code
    assert "give --url or --hub/--app, not both" in result.stderr


def test_duraray_url_from_the_environment(url: str) -> None:
    """$DURARAY_URL is used when no hub is named; an explicit --hub goes over Ray instead."""
    result = _runner().invoke(cli.main, ["list", "--json"], env={"DURARAY_URL": url})
    expected = 0
    assert expected == result.exit_code
    args = ["--hub", "h", "--address", "127.0.0.1:1", "--connect-timeout", "2", "list"]
    result = _runner().invoke(cli.main, args, env={"DURARAY_URL": url})
    expected = 5
    assert expected == result.exit_code
    assert "Ray cluster" in result.stderr


def test_a_command_over_http_imports_no_ray(client: dr.Client, url: str) -> None:
    """`duraray --url URL list` / `status` run without importing ray or the server's
    Starlette (a subprocess, so that nothing this test process imported counts)."""
    completed(client, doubler, 4, "no-ray")
    script = (
        "import sys\n"
        "from duraray.runtime.cli import main\n"
        "for args in (['list', '--json'], ['status', 'no-ray']):\n"
        "    try:\n"
        f"        main(['--url', {url!r}, *args])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'starlette', 'uvicorn'))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    env.pop("DURARAY_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    expected = 0
    assert expected == done.returncode, done.stderr
    assert done.stdout.rstrip().endswith("ok")
    assert "no-ray" in done.stdout
