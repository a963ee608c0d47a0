"""The `duraray` command line, against an in-process hub (no Ray).

Reaching Ray is tested against addresses where nothing, or something mute, listens; the
cases that leave a Ray connect hanging run the command in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

import duraray as dr
from duraray.runtime.cli import _app as cli
from duraray.runtime.cli import _connect, _hub
from duraray.runtime.ray import manager
from duraray.testing import ManualClock, run_in_process

app = dr.App("cli-tests")
attempts: dict[str, int] = {}

Status = dr.OrchestrationStatus


@app.activity
def double(ctx: dr.ActivityContext, value: int) -> int:
    return value * 2


@app.activity
def explode(ctx: dr.ActivityContext, message: str) -> None:
    raise RuntimeError(message)


@app.activity
def fails_first_time(ctx: dr.ActivityContext) -> str:
    attempts[ctx.orchestration_id] = attempts.get(ctx.orchestration_id, 0) + 1
    if attempts[ctx.orchestration_id] == 1:
        raise RuntimeError("first attempt fails")
    return "recovered"


@app.orchestration
def doubler(ctx: dr.OrchestrationContext, value: int):
    return (yield ctx.call_activity(double, input=value))


@app.orchestration
def failing(ctx: dr.OrchestrationContext, message: str):
    yield ctx.call_activity(explode, input=message)


@app.orchestration
def flaky(ctx: dr.OrchestrationContext, _: Any = None):
    return (yield ctx.call_activity(fails_first_time))


@app.orchestration
def waiter(ctx: dr.OrchestrationContext, _: Any = None):
    return (yield ctx.wait_for_external_event("go"))


@app.orchestration
def rich_output(ctx: dr.OrchestrationContext, _: Any = None):
    return {"when": ctx.current_utc_datetime, "raw": b"\x00\x01", "pair": (1, 2)}


@app.entity
class Counter(dr.DurableEntity):
    def add(self, amount: int) -> None:
        self.set_state(self.get_state(int, 0) + amount)

    def get(self) -> int:
        return self.get_state(int, 0)


Invoke = Callable[..., Result]


@pytest.fixture
def client() -> Iterator[dr.Client]:
    """The test app in process on a memory store, with timers that fire when idle."""
    with run_in_process(app, clock=ManualClock(auto_advance=True)) as c:
        yield c


@pytest.fixture
def run(client: dr.Client) -> Invoke:
    """Invoke `duraray ARGS...` with the in-process client injected."""
    runner = CliRunner()

    def invoke(*args: str, **obj: Any) -> Result:
        return runner.invoke(
            cli.main,
            list(args),
            obj={"client_factory": lambda: client, **obj},
            catch_exceptions=False,
        )

    return invoke


def completed(client: dr.Client, orchestration: Any, value: Any, instance_id: str) -> str:
    """Run an orchestration to its end and return its id."""
    iid = client.schedule_new_orchestration(orchestration, input=value, instance_id=instance_id)
    client.wait_for_orchestration_completion(iid, timeout=30)
    return iid


def started_waiter(client: dr.Client, instance_id: str = "w1") -> str:
    """Start a `waiter` instance and return once it is running."""
    iid = client.schedule_new_orchestration(waiter, instance_id=instance_id)
    client.wait_for_orchestration_start(iid, timeout=30)
    return iid


def parsed(result: Result) -> Any:
    """The command's stdout, parsed as JSON."""
    return json.loads(result.stdout)


# -- status --------------------------------------------------------------------------------


def test_status_shows_a_completed_instance_for_people(client: dr.Client, run: Invoke) -> None:
    """`status ID` prints aligned fields with the status, input and output."""
    completed(client, doubler, 21, "d1")
    result = run("status", "d1")
    expected = 0
    assert expected == result.exit_code
    assert "status        COMPLETED" in result.stdout
    assert "output        42" in result.stdout
    assert "name          doubler" in result.stdout


def test_status_json_is_machine_readable(client: dr.Client, run: Invoke) -> None:
    """`status ID --json` prints the state as JSON with ISO times and JSON payloads."""
    completed(client, doubler, 21, "d1")
    data = parsed(run("status", "d1", "--json"))
    expected = {
        "instance_id": "d1",
        "name": "doubler",
        "runtime_status": "COMPLETED",
        "input": 21,
        "output": 42,
    }
    assert expected == {k: data[k] for k in expected}
    expected_created = "2026-01-01T00:00:00+00:00"
    assert expected_created == data["created_at"]


def test_json_goes_before_the_command_too(client: dr.Client, run: Invoke) -> None:
    """The group-level `--json` applies to the command after it."""
    completed(client, doubler, 1, "d1")
    expected = "COMPLETED"
    assert expected == parsed(run("--json", "status", "d1"))["runtime_status"]


def test_status_of_an_unknown_instance_exits_3(run: Invoke) -> None:
    """An unknown instance id is "not found": exit code 3."""
    result = run("status", "nope")
    expected = 3
    assert expected == result.exit_code
    assert "no orchestration instance with id 'nope'" in result.stderr


def test_errors_are_json_with_json(run: Invoke) -> None:
    """With --json an error is a JSON object on stderr, and stdout stays empty."""
    result = run("status", "nope", "--json")
    message = "no orchestration instance with id 'nope'"
    expected = {"code": 3, "kind": "not_found", "message": message}
    assert expected == json.loads(result.stderr)["error"]
    expected_stdout = ""
    assert expected_stdout == result.stdout


def test_status_json_payloads_are_json_values(client: dr.Client, run: Invoke) -> None:
    """Datetimes in payloads become ISO 8601 strings, bytes base64 and tuples lists."""
    completed(client, rich_output, None, "r1")
    expected = {"when": "2026-01-01T00:00:00+00:00", "raw": "AAE=", "pair": [1, 2]}
    assert expected == parsed(run("status", "r1", "--json"))["output"]


def test_status_wait_on_an_unknown_instance_exits_3(run: Invoke) -> None:
    """`status --wait` on an unknown id exits 3 at once instead of waiting."""
    expected = 3
    assert expected == run("status", "nope", "--wait").exit_code


def test_status_of_an_invalid_id_exits_2(run: Invoke) -> None:
    """An id with control characters is bad input: exit code 2."""
    result = run("status", "bad\x01id")
    expected = 2
    assert expected == result.exit_code


def test_status_wait_on_a_failed_instance_exits_1(client: dr.Client, run: Invoke) -> None:
    """`status --wait` on an instance that ends FAILED prints it and exits 1."""
    client.schedule_new_orchestration(failing, input="boom", instance_id="f1")
    result = run("status", "f1", "--wait", "--timeout", "30")
    expected = 1
    assert expected == result.exit_code
    assert "FAILED" in result.stdout
    assert "<- RuntimeError: boom" in result.stdout


def test_status_wait_returns_the_final_state(client: dr.Client, run: Invoke) -> None:
    """`status --wait --json` waits for completion and prints the final state."""
    client.schedule_new_orchestration(doubler, input=5, instance_id="d5")
    result = run("status", "d5", "--wait", "--json")
    expected = (0, "COMPLETED", 10)
    data = parsed(result)
    assert expected == (result.exit_code, data["runtime_status"], data["output"])


def test_status_wait_times_out_with_124(client: dr.Client, run: Invoke) -> None:
    """Waiting longer than --timeout for an instance exits 124 and says its status."""
    started_waiter(client)
    result = run("status", "w1", "--wait", "--timeout", "0.2")
    expected = 124
    assert expected == result.exit_code
    assert "timed out" in result.stderr
    assert "RUNNING" in result.stderr


def test_timeout_without_wait_is_a_usage_error(run: Invoke) -> None:
    """`--timeout` only makes sense with `--wait`: exit code 2."""
    expected = 2
    assert expected == run("status", "x", "--timeout", "1").exit_code


def test_wait_draws_a_spinner_on_a_terminal(client: dr.Client, run: Invoke) -> None:
    """On a terminal, waiting draws a spinner on stderr with the instance id."""
    started_waiter(client)
    result = run("status", "w1", "--wait", "--timeout", "0.2", progress=True)
    assert "\r| waiting for w1 (RUNNING, 0 s)" in result.stderr


def test_wait_never_draws_a_spinner_with_json(client: dr.Client, run: Invoke) -> None:
    """With --json no spinner is drawn, even on a terminal."""
    started_waiter(client)
    result = run("status", "w1", "--wait", "--timeout", "0.2", "--json", progress=True)
    assert "\r" not in result.stderr
    expected = "timeout"
    assert expected == json.loads(result.stderr)["error"]["kind"]


# -- history -------------------------------------------------------------------------------


def test_history_is_a_readable_table(client: dr.Client, run: Invoke) -> None:
    """`history ID` prints a table of events with task ids, names and details."""
    completed(client, doubler, 21, "d1")
    result = run("history", "d1")
    lines = result.stdout.splitlines()
    expected = ["#", "TIME", "EVENT", "TYPE", "TASK", "ID", "NAME", "DETAIL"]
    assert expected == lines[0].split()
    completion = next(line for line in lines if "TaskCompleted" in line)
    assert "double" in completion
    assert "result=42" in completion


def test_history_json_is_a_list_of_events(client: dr.Client, run: Invoke) -> None:
    """`history ID --json` gives every event as an object with its type."""
    completed(client, doubler, 21, "d1")
    events = parsed(run("history", "d1", "--json"))
    expected = ["ExecutionStarted", "TaskScheduled", "TaskCompleted", "ExecutionCompleted"]
    assert expected == [e["type"] for e in events if e["type"] != "OrchestratorStarted"]
    expected_result = 42
    assert expected_result == events[-1]["result"]


def test_history_of_an_unknown_instance_exits_3(run: Invoke) -> None:
    """The history of an unknown instance is "not found": exit code 3."""
    expected = 3
    assert expected == run("history", "nope").exit_code


# -- list ----------------------------------------------------------------------------------


@pytest.fixture
def three(client: dr.Client) -> None:
    """Two finished `order-` instances and one running `other-` instance."""
    completed(client, doubler, 1, "order-1")
    completed(client, doubler, 2, "order-2")
    started_waiter(client, "other-1")


@pytest.mark.usefixtures("three")
def test_list_filters_by_prefix(run: Invoke) -> None:
    """`list --prefix` keeps the instances whose ids start with it."""
    expected = ["order-1", "order-2"]
    listed = parsed(run("list", "--prefix", "order-", "--json"))
    assert expected == sorted(s["instance_id"] for s in listed)


@pytest.mark.usefixtures("three")
def test_list_filters_by_status(run: Invoke) -> None:
    """`list --status` (case-insensitive, repeatable) keeps those statuses."""
    expected = ["other-1"]
    listed = parsed(run("list", "--status", "running", "--json"))
    assert expected == [s["instance_id"] for s in listed]


@pytest.mark.usefixtures("three")
def test_list_filters_by_creation_time(run: Invoke) -> None:
    """`--created-to` before the instances were created matches none of them."""
    expected: list[Any] = []
    assert expected == parsed(run("list", "--created-to", "2025-12-31", "--json"))
    expected_count = 3
    listed = parsed(run("list", "--created-from", "2025-12-31T00:00:00Z", "--json"))
    assert expected_count == len(listed)


@pytest.mark.usefixtures("three")
def test_list_top_and_all(run: Invoke) -> None:
    """`--top N` returns at most N instances and `--all` every one."""
    expected = (1, 3)
    top = parsed(run("list", "--top", "1", "--json"))
    everything = parsed(run("list", "--all", "--json"))
    assert expected == (len(top), len(everything))


@pytest.mark.usefixtures("three")
def test_list_is_a_table_for_people(run: Invoke) -> None:
    """Without --json, `list` prints a table with one row per instance."""
    result = run("list")
    lines = result.stdout.splitlines()
    expected = ["INSTANCE", "ID", "NAME", "STATUS", "CREATED", "LAST", "UPDATED"]
    assert expected == lines[0].split()
    expected_rows = 3
    assert expected_rows == len(lines) - 1


def test_list_rejects_a_malformed_date(run: Invoke) -> None:
    """A --created-from that is not ISO 8601 is bad input: exit code 2."""
    expected = 2
    assert expected == run("list", "--created-from", "yesterday").exit_code


def test_list_rejects_top_with_all(run: Invoke) -> None:
    """`--top` and `--all` together are a usage error."""
    expected = 2
    assert expected == run("list", "--top", "1", "--all").exit_code


# -- raise, terminate, suspend, resume, rewind, restart ----------------------------------------


def test_raise_delivers_json_data(client: dr.Client, run: Invoke) -> None:
    """`raise ID EVENT --data JSON` delivers the decoded value to the orchestration."""
    started_waiter(client)
    result = run("raise", "w1", "go", "--data", '{"ok": true}', "--json")
    expected = {"instance_id": "w1", "event_name": "go", "raised": True}
    assert expected == parsed(result)
    expected_output = {"ok": True}
    assert expected_output == client.wait_for_orchestration_completion("w1", timeout=30).output


def test_raise_on_a_completed_instance_exits_4(client: dr.Client, run: Invoke) -> None:
    """Raising an event on a finished instance is a state conflict: exit code 4."""
    completed(client, doubler, 1, "d1")
    result = run("raise", "d1", "go")
    expected = 4
    assert expected == result.exit_code


def test_raise_on_an_unknown_instance_exits_3(run: Invoke) -> None:
    """Raising an event on an unknown instance exits 3."""
    expected = 3
    assert expected == run("raise", "nope", "go").exit_code


def test_raise_with_malformed_data_exits_2(client: dr.Client, run: Invoke) -> None:
    """Malformed --data JSON is bad input: exit code 2, and nothing is delivered."""
    started_waiter(client)
    result = run("raise", "w1", "go", "--data", "{not json")
    expected = 2
    assert expected == result.exit_code
    assert "malformed JSON" in result.stderr
    expected_status = Status.RUNNING
    assert expected_status == client.get_orchestration_state("w1").runtime_status


def test_data_can_come_from_a_file(client: dr.Client, run: Invoke, tmp_path: Any) -> None:
    """`--data @path` reads the JSON value from a file."""
    started_waiter(client)
    path = tmp_path / "data.json"
    path.write_text("[1, 2, 3]")
    run("raise", "w1", "go", "--data", f"@{path}")
    expected = [1, 2, 3]
    assert expected == client.wait_for_orchestration_completion("w1", timeout=30).output


def test_terminate_with_a_reason(client: dr.Client, run: Invoke) -> None:
    """`terminate ID --reason JSON` ends the instance TERMINATED with that output."""
    started_waiter(client)
    result = run("terminate", "w1", "--reason", '"no longer needed"')
    expected = 0
    assert expected == result.exit_code
    state = client.wait_for_orchestration_completion("w1", timeout=30)
    expected_end = (Status.TERMINATED, "no longer needed")
    assert expected_end == (state.runtime_status, state.output)


def test_status_wait_on_a_terminated_instance_exits_1(client: dr.Client, run: Invoke) -> None:
    """Waiting on an instance that was terminated exits 1."""
    started_waiter(client)
    client.terminate_orchestration("w1")
    client.wait_for_orchestration_completion("w1", timeout=30)
    expected = 1
    assert expected == run("status", "w1", "--wait").exit_code


def test_terminate_a_finished_instance_changes_nothing(client: dr.Client, run: Invoke) -> None:
    """Terminating a finished instance is a no-op that says so (exit 0)."""
    completed(client, doubler, 1, "d1")
    result = run("terminate", "d1", "--json")
    expected = {"instance_id": "d1", "terminated": False, "runtime_status": "COMPLETED"}
    assert expected == parsed(result)


def test_terminate_an_unknown_instance_exits_3(run: Invoke) -> None:
    """Terminating an unknown instance exits 3."""
    expected = 3
    assert expected == run("terminate", "nope").exit_code


def test_suspend_and_resume(client: dr.Client, run: Invoke) -> None:
    """`suspend` then `resume` move a running instance to SUSPENDED and back."""
    started_waiter(client)
    run("suspend", "w1", "--reason", "maintenance")
    suspended = client.get_orchestration_state("w1").runtime_status
    run("resume", "w1")
    resumed = client.get_orchestration_state("w1").runtime_status
    expected = (Status.SUSPENDED, Status.RUNNING)
    assert expected == (suspended, resumed)


def test_suspend_a_finished_instance_exits_4(client: dr.Client, run: Invoke) -> None:
    """Suspending a finished instance is a state conflict: exit code 4."""
    completed(client, doubler, 1, "d1")
    expected = 4
    assert expected == run("suspend", "d1").exit_code


def test_rewind_reruns_the_failed_work(client: dr.Client, run: Invoke) -> None:
    """`rewind ID` runs a FAILED instance's failed activity again, to completion."""
    client.schedule_new_orchestration(flaky, instance_id="r1")
    first = client.wait_for_orchestration_completion("r1", timeout=30).runtime_status
    result = run("rewind", "r1", "--reason", "fixed", "--json")
    expected = {"instance_id": "r1", "operation": "rewind", "done": True}
    assert expected == parsed(result)
    state = client.wait_for_orchestration_completion("r1", timeout=30)
    expected_statuses = (Status.FAILED, Status.COMPLETED, "recovered")
    assert expected_statuses == (first, state.runtime_status, state.output)


def test_rewind_a_completed_instance_exits_4(client: dr.Client, run: Invoke) -> None:
    """Only FAILED instances can be rewound: exit code 4 otherwise."""
    completed(client, doubler, 1, "d1")
    expected = 4
    assert expected == run("rewind", "d1").exit_code


def test_restart_keeps_or_changes_the_id(client: dr.Client, run: Invoke) -> None:
    """`restart ID` reruns under the same id, `--new-id` under a new one."""
    completed(client, doubler, 4, "d1")
    same = parsed(run("restart", "d1", "--json"))
    client.wait_for_orchestration_completion("d1", timeout=30)
    other = parsed(run("restart", "d1", "--new-id", "--json"))
    expected = ("d1", "d1")
    assert expected == (same["instance_id"], other["restarted_from"])
    original = "d1"
    assert original != other["instance_id"]
    expected_output = 8
    rerun = client.wait_for_orchestration_completion(other["instance_id"], timeout=30)
    assert expected_output == rerun.output


def test_restart_a_running_instance_exits_4(client: dr.Client, run: Invoke) -> None:
    """Restarting an instance that is still running is a state conflict."""
    started_waiter(client)
    expected = 4
    assert expected == run("restart", "w1").exit_code


# -- purge ---------------------------------------------------------------------------------


def test_purge_one_instance(client: dr.Client, run: Invoke) -> None:
    """`purge ID` deletes a finished instance, which is then unknown."""
    completed(client, doubler, 1, "d1")
    result = run("purge", "d1", "--json")
    expected = {"instance_id": "d1", "deleted_instance_count": 1}
    assert expected == parsed(result)
    expected_after = 3
    assert expected_after == run("status", "d1").exit_code


def test_purge_a_running_instance_exits_4(client: dr.Client, run: Invoke) -> None:
    """A running instance cannot be purged: exit code 4, and it stays."""
    started_waiter(client)
    expected = 4
    assert expected == run("purge", "w1").exit_code
    assert client.get_orchestration_state("w1") is not None


def test_purge_an_unknown_instance_exits_3(run: Invoke) -> None:
    """Purging an unknown instance exits 3."""
    expected = 3
    assert expected == run("purge", "nope").exit_code


def test_purge_by_status(client: dr.Client, run: Invoke) -> None:
    """`purge --status Failed` deletes the failed instances only."""
    client.schedule_new_orchestration(failing, input="x", instance_id="f1")
    client.wait_for_orchestration_completion("f1", timeout=30)
    completed(client, doubler, 1, "d1")
    result = run("purge", "--status", "Failed", "--created-to", "2030-01-01", "--json")
    expected = {"deleted_instance_count": 1}
    assert expected == parsed(result)
    assert client.get_orchestration_state("f1") is None
    assert client.get_orchestration_state("d1") is not None


def test_purge_needs_an_id_or_filters(run: Invoke) -> None:
    """`purge` without an id or a filter (or with both) is a usage error."""
    expected = (2, 2)
    assert expected == (run("purge").exit_code, run("purge", "x", "--status", "FAILED").exit_code)


# -- schedule ------------------------------------------------------------------------------


def test_schedule_and_wait(run: Invoke) -> None:
    """`schedule NAME --input JSON --id ID --wait` runs it and prints the final state."""
    result = run("schedule", "doubler", "--input", "21", "--id", "s1", "--wait", "--json")
    expected = (0, "s1", "COMPLETED", 42)
    data = parsed(result)
    actual = (result.exit_code, data["instance_id"], data["runtime_status"], data["output"])
    assert expected == actual


def test_schedule_prints_the_id(client: dr.Client, run: Invoke) -> None:
    """Without --wait, `schedule` prints the new instance's id and returns."""
    data = parsed(run("schedule", "waiter", "--json"))
    assert client.get_orchestration_state(data["instance_id"]) is not None


def test_schedule_a_running_id_exits_4(client: dr.Client, run: Invoke) -> None:
    """Scheduling with the id of a running instance is a state conflict: exit code 4."""
    started_waiter(client)
    expected = 4
    assert expected == run("schedule", "waiter", "--id", "w1").exit_code


def test_schedule_with_malformed_input_exits_2(run: Invoke) -> None:
    """Malformed --input JSON is bad input: exit code 2."""
    expected = 2
    assert expected == run("schedule", "doubler", "--input", "forty-two").exit_code


def test_schedule_wait_on_failure_exits_1(run: Invoke) -> None:
    """`schedule --wait` of an orchestration that fails exits 1."""
    expected = 1
    assert expected == run("schedule", "failing", "--input", '"bad"', "--wait").exit_code


# -- entities ------------------------------------------------------------------------------


def test_signal_then_show_the_entity(client: dr.Client, run: Invoke) -> None:
    """`signal @counter@a add --input 5` changes the state `entity @counter@a` shows."""
    result = run("signal", "@counter@a", "add", "--input", "5", "--json")
    expected = {"entity_id": "@counter@a", "operation": "add", "signalled": True}
    assert expected == parsed(result)
    client.hub_runtime.wait_idle()  # type: ignore[attr-defined]
    data = parsed(run("entity", "@counter@a", "--json"))
    expected_entity = {
        "entity_id": "@counter@a",
        "state": 5,
        "locked_by": None,
        "backlog_queue_size": 0,
    }
    assert expected_entity == {k: data[k] for k in expected_entity}
    text = run("entity", "@counter@a").stdout
    assert "state          5" in text


def test_entity_list(client: dr.Client, run: Invoke) -> None:
    """`entity --list [--name N]` lists entities with their state."""
    client.signal_entity("@counter@a", "add", 1)
    client.signal_entity("@counter@b", "add", 2)
    client.hub_runtime.wait_idle()  # type: ignore[attr-defined]
    listed = parsed(run("entity", "--list", "--name", "counter", "--json"))
    expected = [("@counter@a", 1), ("@counter@b", 2)]
    assert expected == [(e["entity_id"], e["state"]) for e in listed]
    table = run("entity", "--list").stdout.splitlines()
    expected_rows = 3
    assert expected_rows == len(table)


def test_unknown_entity_exits_3(run: Invoke) -> None:
    """Showing an entity that does not exist exits 3."""
    expected = 3
    assert expected == run("entity", "@counter@nobody").exit_code


def test_malformed_entity_id_exits_2(run: Invoke) -> None:
    """An entity id that is not @name@key is bad input: exit code 2."""
    expected = (2, 2)
    actual = (run("signal", "counter", "add").exit_code, run("entity", "counter").exit_code)
    assert expected == actual


def test_entity_needs_an_id_or_list(run: Invoke) -> None:
    """`entity` with neither an id nor --list is a usage error."""
    expected = 2
    assert expected == run("entity").exit_code


# -- parked (poison isolation) ---------------------------------------------------------------


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signals to ``@counter@bad`` raise inside the partition (poison), every time."""
    from duraray.runtime.engine.entity_host import EntityHost

    original = EntityHost.signal

    def signal(self: EntityHost, b: Any, *, entity_id: str, **kwargs: Any) -> None:
        if entity_id == "@counter@bad":
            raise RuntimeError("no signal for you")
        original(self, b, entity_id=entity_id, **kwargs)

    monkeypatch.setattr(EntityHost, "signal", signal)


def test_parked_lists_what_a_partition_set_aside(
    client: dr.Client, run: Invoke, poisoned: None
) -> None:
    """A signal that fails inside its partition exits 1 with the engine's reason; `parked`
    then lists it as a table, and with --json in full."""
    assert "no parked items" == run("parked").stdout.strip()
    failed = run("signal", "@counter@bad", "add", "--input", "1")
    assert 1 == failed.exit_code
    assert "failed inside the partition: RuntimeError: no signal for you" in failed.stderr
    assert 0 == run("signal", "@counter@good", "add", "--input", "1").exit_code  # goes on
    table = run("parked").stdout.splitlines()
    assert ["PARTITION", "KIND", "TARGET", "PARKED", "AT", "ERROR"] == table[0].split()
    assert 2 == len(table)
    assert "request" in table[1] and "signal_entity @counter@bad" in table[1]
    assert "RuntimeError: no signal for you" in table[1]
    [item] = parsed(run("parked", "--json", "--top", "5"))
    expected = {"partition", "kind", "target", "parked_at", "error", "detail"}
    assert expected == set(item)
    assert ("request", "signal_entity @counter@bad") == (item["kind"], item["target"])
    assert "Traceback" in item["detail"]


def test_parked_says_when_top_cut_the_list(run: Invoke, poisoned: None) -> None:
    """With as many items as --top, a note on stderr says more may be parked."""
    run("signal", "@counter@bad", "add")
    result = run("parked", "--top", "1")
    assert (0, True) == (result.exit_code, "more may be parked" in result.stderr)


def test_parked_top_out_of_range_exits_2(run: Invoke) -> None:
    """--top outside 1 to 10,000 is a usage error."""
    assert (2, 2) == (
        run("parked", "--top", "0").exit_code,
        run("parked", "--top", "10001").exit_code,
    )


# -- reaching a hub ------------------------------------------------------------------------


def test_no_hub_given_is_a_usage_error() -> None:
    """Without --hub, --app or an injected client, a hub command exits 2 and says why."""
    result = CliRunner().invoke(cli.main, ["status", "x"])
    expected = 2
    assert expected == result.exit_code
    assert "--hub NAME" in result.stderr


def test_hub_not_running_exits_5(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--hub NAME` for a hub that is not running exits 5."""
    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)
    monkeypatch.setattr(manager, "ensure_ray", lambda *args, **kwargs: False)

    def attach(hub: str, *, address: str | None = "auto") -> dr.Client:
        raise dr.HubConfigurationError(f"hub {hub!r} is not running on this Ray cluster")

    monkeypatch.setattr(dr.Client, "attach", staticmethod(attach))
    result = CliRunner().invoke(cli.main, ["--hub", "ghost", "status", "x"])
    expected = 5
    assert expected == result.exit_code
    assert "hub 'ghost' is not running" in result.stderr


def test_no_ray_cluster_exits_5(monkeypatch: pytest.MonkeyPatch) -> None:
    """When no Ray cluster can be reached, hub commands exit 5."""
    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)

    def no_ray(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(manager, "ensure_ray", no_ray)
    result = CliRunner().invoke(cli.main, ["status", "x", "--hub", "shop"])
    expected = 5
    assert expected == result.exit_code
    assert "cannot reach a Ray cluster" in result.stderr


def test_app_option_attaches_through_app_start(
    client: dr.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--app module:app` imports the App and uses the client `App.start` returns."""
    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)
    monkeypatch.setattr(manager, "ensure_ray", lambda *args, **kwargs: False)
    calls: list[dict[str, Any]] = []

    def start(**kwargs: Any) -> dr.Client:
        calls.append(kwargs)
        return client

    monkeypatch.setattr(app, "start", start)
    completed(client, doubler, 1, "d1")
    result = CliRunner().invoke(cli.main, ["status", "d1", "--app", f"{__name__}:app", "--json"])
    expected = ("COMPLETED", [{"address": "auto"}])
    assert expected == (parsed(result)["runtime_status"], calls)


# -- reaching Ray: bounded, interruptible, with the fix in the message ----------------------

#: The `duraray` command, in a process of its own.
CLI = [sys.executable, "-c", "from duraray.runtime.cli import main; main()"]


def cli_env() -> dict[str, str]:
    """This environment without RAY_ADDRESS (which would override "auto")."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.fixture
def mute_port() -> Iterator[socket.socket]:
    """A TCP port that accepts connections and never answers: a GCS that does not respond."""
    with socket.socket() as listener:
        listener.bind(("", 0))  # every interface: Ray turns 127.0.0.1 into the node's IP
        listener.listen(64)
        yield listener


@pytest.fixture
def no_ray_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process looks as if it had not joined Ray (the test session may have)."""
    import ray

    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: pytest.fail("ray.init was called"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_a_mute_ray_address_exits_5_within_the_timeout(mute_port: socket.socket) -> None:
    """A Ray address that accepts but never answers: exit 5 after --connect-timeout, with
    one line on stderr (none of Ray's retry warnings)."""
    address = f"127.0.0.1:{mute_port.getsockname()[1]}"
    args = ["status", "x", "--hub", "h", "--address", address, "--connect-timeout", "2"]
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env=cli_env()
    )
    expected = (5, [f"Error: cannot reach a Ray cluster at {address!r} within 2 s"])
    assert expected == (result.returncode, result.stderr.splitlines())


def test_sigterm_stops_a_hanging_connect(mute_port: socket.socket) -> None:
    """SIGTERM while Ray tries to connect ends the command at once (128 + SIGTERM)."""
    address = f"127.0.0.1:{mute_port.getsockname()[1]}"
    args = ["--connect-timeout", "300", "status", "x", "--hub", "h", "--address", address]
    process = subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
    )
    try:
        mute_port.settimeout(60)
        mute_port.accept()[0].close()  # the command's TCP check: it is connecting now
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    expected = (128 + signal.SIGTERM, True)
    assert expected == (process.returncode, "SIGTERM: stopped connecting" in stderr)


def test_a_dead_ray_address_exits_5_at_once(no_ray_yet: None) -> None:
    """Nothing listening at --address: exit 5 without trying Ray, and say so."""
    args = ["status", "x", "--hub", "h", "--address", "127.0.0.1:1", "--connect-timeout", "5"]
    result = CliRunner().invoke(cli.main, args)
    expected = 5
    assert expected == result.exit_code
    assert "cannot reach a Ray cluster at '127.0.0.1:1': nothing answers at" in result.stderr


def test_a_stale_recorded_cluster_exits_5(
    no_ray_yet: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """ "auto" finding a dead cluster in ray_current_cluster (left by `ray start`) exits 5
    and names the file."""
    from ray._private import services

    recorded = tmp_path / "ray" / "ray_current_cluster"
    recorded.parent.mkdir()
    recorded.write_text("127.0.0.1:1\n")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))

    def no_local_gcs() -> frozenset[str]:  # Ray's fallback: GCS processes on this machine
        return frozenset()

    no_local_gcs.cache_clear = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(services, "find_gcs_addresses", no_local_gcs)
    result = CliRunner().invoke(cli.main, ["status", "x", "--hub", "h"])
    expected = 5
    assert expected == result.exit_code
    assert f"{recorded} names a cluster that is gone" in result.stderr


def test_connect_timeout_goes_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """--connect-timeout (default 30 s) reaches the connect from the group or the command."""
    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)
    seen: list[tuple[str, float]] = []

    def ensure_ray(address: str, **options: Any) -> bool:
        seen.append((address, options["connect_timeout"]))
        raise ConnectionError("nothing answers")

    monkeypatch.setattr(manager, "ensure_ray", ensure_ray)
    runner = CliRunner()
    codes = [
        runner.invoke(
            cli.main, ["--connect-timeout", "2.5", "status", "x", "--hub", "h"]
        ).exit_code,
        runner.invoke(cli.main, ["stop", "--hub", "h", "--connect-timeout", "7"]).exit_code,
        runner.invoke(cli.main, ["start", "--app", f"{__name__}:app"]).exit_code,
        runner.invoke(cli.main, ["status", "x", "--hub", "h", "--connect-timeout", "0"]).exit_code,
    ]
    expected = ([5, 5, 5, 2], [("auto", 2.5), ("auto", 7.0), ("auto", 30.0)])
    assert expected == (codes, seen)


def auth_failure(address: str) -> ConnectionError:
    """What ray.init raises, after 20 s of InvalidAuthToken warnings, when the cluster has
    token authentication on and this process sends no token (Ray 2.5x)."""
    try:
        raise RuntimeError(
            "Failed to connect to GCS. Last connection error: Traceback (most recent call "
            "last):\n  ...\nray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: "
            "Authentication token is missing or incorrect. Note: RAY_AUTH_MODE is currently "
            "'disabled' (not 'token')."
        )
    except RuntimeError as exc:
        try:
            raise ConnectionError(f"Failed to connect to Ray cluster at {address}") from exc
        except ConnectionError as error:
            return error


def test_a_cluster_that_wants_a_token_exits_5_with_the_fix(
    no_ray_yet: None, monkeypatch: pytest.MonkeyPatch, mute_port: socket.socket
) -> None:
    """Ray's token-authentication failure says how to fix it: RAY_AUTH_MODE=token."""
    import ray

    def init(**options: Any) -> None:
        raise auth_failure(options["address"])

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    address = f"127.0.0.1:{mute_port.getsockname()[1]}"
    result = CliRunner().invoke(cli.main, ["status", "x", "--hub", "h", "--address", address])
    expected = (5, 1)
    assert expected == (result.exit_code, len(result.stderr.splitlines()))
    assert "rejected this process's authentication token" in result.stderr
    assert "set RAY_AUTH_MODE=token" in result.stderr


def test_a_missing_token_in_token_mode_says_whose_token(
    no_ray_yet: None, monkeypatch: pytest.MonkeyPatch, mute_port: socket.socket
) -> None:
    """With RAY_AUTH_MODE=token already set, the fix is the cluster's token."""
    import ray
    from ray.exceptions import AuthenticationError

    def init(**options: Any) -> None:
        raise AuthenticationError("Token authentication is enabled but no token was found")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    address = f"127.0.0.1:{mute_port.getsockname()[1]}"
    result = CliRunner().invoke(cli.main, ["status", "x", "--hub", "h", "--address", address])
    expected = 5
    assert expected == result.exit_code
    assert "the head node's ~/.ray/auth_token" in result.stderr


@pytest.mark.parametrize(
    "spec", ["no_such_module_for_duraray:app", f"{__name__}:nothing", f"{__name__}:Status"]
)
def test_bad_app_spec_exits_2(spec: str) -> None:
    """An --app that cannot be imported, or is not an App, is bad input: exit code 2."""
    result = CliRunner().invoke(cli.main, ["start", "--app", spec])
    expected = 2
    assert expected == result.exit_code


# -- start, stop, serve --------------------------------------------------------------------


def test_start_prints_the_hub_and_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """`start --app` launches the hub with the options given and prints where it lives."""
    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)
    monkeypatch.setattr(manager, "ensure_ray", lambda *args, **kwargs: True)
    running: list[Any] = []
    calls: list[dict[str, Any]] = []

    def find(hub: str, timeout: float = 0.0) -> Any:
        return running[0] if running else None

    def start(**kwargs: Any) -> None:
        calls.append(kwargs)
        info = {"data_dir": str(tmp_path), "partitions": kwargs["partitions"]}
        running.append(types.SimpleNamespace(info=info))

    monkeypatch.setattr(manager.PartitionManager, "find", staticmethod(find))
    monkeypatch.setattr(app, "start", start)
    args = ["start", "--app", f"{__name__}:app", "--data-dir", str(tmp_path), "--partitions", "2"]
    result = CliRunner().invoke(cli.main, args)
    expected = 0
    assert expected == result.exit_code
    assert "started hub 'cli-tests' (2 partitions)" in result.stdout
    assert f"data dir: {tmp_path}" in result.stdout
    expected_call = [{"address": "auto", "data_dir": str(tmp_path), "partitions": 2}]
    assert expected_call == calls
    again = json.loads(CliRunner().invoke(cli.main, [*args, "--json"]).stdout)
    expected_again = {"hub": "cli-tests", "already_running": True, "partitions": 2}
    assert expected_again == {k: again[k] for k in expected_again}


def test_start_validates_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """`start` without --app, or with a bad partition count, exits 2 without launching."""
    monkeypatch.setattr(_hub, "_start_hub", lambda *args, **kwargs: pytest.fail("launched"))
    runner = CliRunner()
    no_app = runner.invoke(cli.main, ["start"])
    zero = runner.invoke(cli.main, ["start", "--app", f"{__name__}:app", "--partitions", "0"])
    expected = (2, 2)
    assert expected == (no_app.exit_code, zero.exit_code)


def test_stop_a_running_and_a_stopped_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """`stop --hub` exits 0 when it stopped the hub and 5 when it was not running."""
    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)
    monkeypatch.setattr(manager, "ensure_ray", lambda *args, **kwargs: True)
    stopped: list[str] = []

    def stop(hub: str) -> bool:
        stopped.append(hub)
        return len(stopped) == 1

    monkeypatch.setattr(manager.PartitionManager, "stop", staticmethod(stop))
    runner = CliRunner()
    first = runner.invoke(cli.main, ["stop", "--hub", "shop", "--json"])
    second = runner.invoke(cli.main, ["stop", "--app", f"{__name__}:app"])
    expected = (0, 5, ["shop", "cli-tests"])
    assert expected == (first.exit_code, second.exit_code, stopped)
    expected_json = {"hub": "shop", "stopped": True}
    assert expected_json == json.loads(first.stdout)


def test_stop_needs_a_hub() -> None:
    """`stop` without --hub or --app is a usage error."""
    expected = 2
    assert expected == CliRunner().invoke(cli.main, ["stop"]).exit_code


@pytest.fixture
def http_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    """A stand-in for `duraray.runtime.http.serve` that records what it is given."""
    import duraray.runtime.http as http

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(http, "serve", lambda client, **kw: calls.append((client, kw)))
    monkeypatch.delenv("DURARAY_HTTP_TOKEN", raising=False)
    return calls


def test_serve_refuses_a_public_host_without_a_token(run: Invoke, http_calls: list[Any]) -> None:
    """`serve --host 0.0.0.0` without a token exits 2 and serves nothing."""
    result = run("serve", "--host", "0.0.0.0")
    expected = (2, [])
    assert expected == (result.exit_code, http_calls)
    assert "without a token" in result.stderr


def test_serve_on_loopback(client: dr.Client, run: Invoke, http_calls: list[Any]) -> None:
    """`serve` on the default loopback host calls the HTTP server with the hub's client."""
    result = run("serve", "--port", "8123")
    expected = (0, [(client, {"host": "127.0.0.1", "port": 8123, "token": None})])
    assert expected == (result.exit_code, http_calls)


@pytest.mark.parametrize("host", ["localhost", "::1", "127.0.0.2"])
def test_serve_needs_no_token_on_loopback(run: Invoke, http_calls: list[Any], host: str) -> None:
    """Every loopback address may be served without a token."""
    expected = (0, 1)
    assert expected == (run("serve", "--host", host).exit_code, len(http_calls))


def test_serve_takes_the_token_from_the_environment(
    client: dr.Client, run: Invoke, http_calls: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DURARAY_HTTP_TOKEN allows a public host and is passed to the server."""
    monkeypatch.setenv("DURARAY_HTTP_TOKEN", "s3cret")
    result = run("serve", "--host", "0.0.0.0")
    expected = (0, [(client, {"host": "0.0.0.0", "port": 8000, "token": "s3cret"})])
    assert expected == (result.exit_code, http_calls)


def test_serve_app_without_a_cluster_runs_the_embedded_default(
    client: dr.Client, monkeypatch: pytest.MonkeyPatch, http_calls: list[Any], tmp_path: Any
) -> None:
    """`serve --app` with no Ray cluster given or running runs the hub as App.run() does,
    with --data-dir; --allowed-host reaches the HTTP server."""
    monkeypatch.setattr(_hub, "_setup_logging", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def no_cluster(address: str, timeout: float) -> str:
        raise ConnectionError("no Ray cluster is running here")

    runs: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def run(**kwargs: Any) -> Iterator[dr.Client]:
        runs.append(kwargs)
        yield client

    monkeypatch.setattr(manager, "probe_ray_cluster", no_cluster)
    monkeypatch.setattr(app, "run", run)
    monkeypatch.setattr(app, "start", lambda **kwargs: pytest.fail("needs a cluster"))
    args = ["serve", "--app", f"{__name__}:app", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(
        cli.main, [*args, "--allowed-host", "a.test", "--allowed-host", "b"]
    )
    served = {"host": "127.0.0.1", "port": 8000, "token": None, "allowed_hosts": ("a.test", "b")}
    expected = (0, [{"data_dir": str(tmp_path)}], [(client, served)])
    assert expected == (result.exit_code, runs, http_calls)
    assert "starting hub 'cli-tests' on a local Ray instance" in result.stderr


def test_serve_app_on_a_running_cluster_launches_it_there(
    client: dr.Client, monkeypatch: pytest.MonkeyPatch, http_calls: list[Any], tmp_path: Any
) -> None:
    """With a cluster running, `serve --app --data-dir` launches the hub on it."""
    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(manager, "probe_ray_cluster", lambda address, timeout: "10.0.0.1:6379")
    monkeypatch.setattr(manager, "ensure_ray", lambda *args, **kwargs: True)
    starts: list[dict[str, Any]] = []

    def start(**kwargs: Any) -> dr.Client:
        starts.append(kwargs)
        return client

    monkeypatch.setattr(app, "start", start)
    args = ["serve", "--app", f"{__name__}:app", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(cli.main, args)
    served = {"host": "127.0.0.1", "port": 8000, "token": None}
    expected = (0, [{"address": "auto", "data_dir": str(tmp_path)}], [(client, served)])
    assert expected == (result.exit_code, starts, http_calls)


def test_serve_on_a_given_address_never_runs_embedded(
    monkeypatch: pytest.MonkeyPatch, http_calls: list[Any]
) -> None:
    """With --address, a cluster that cannot be reached is exit 5, not a local Ray."""
    monkeypatch.setattr(_connect, "_setup_logging", lambda: None)

    def unreachable(*args: Any, **kwargs: Any) -> bool:
        raise ConnectionError("nothing answers at 10.0.0.1:6379 (Connection refused)")

    monkeypatch.setattr(manager, "ensure_ray", unreachable)
    monkeypatch.setattr(app, "run", lambda **kwargs: pytest.fail("ran embedded"))
    args = ["serve", "--app", f"{__name__}:app", "--address", "10.0.0.1:6379"]
    result = CliRunner().invoke(cli.main, args)
    expected = (5, [])
    assert expected == (result.exit_code, http_calls)
    assert "cannot reach a Ray cluster at '10.0.0.1:6379'" in result.stderr


def test_serve_data_dir_needs_app(run: Invoke, http_calls: list[Any]) -> None:
    """--data-dir is for a hub that --app launches: with --hub alone it is a usage error."""
    expected = (2, [])
    assert expected == (run("serve", "--hub", "shop", "--data-dir", "d").exit_code, http_calls)


def test_serve_rejects_a_bad_port(run: Invoke, http_calls: list[Any]) -> None:
    """A port outside 0-65535 is a usage error."""
    expected = 2
    assert expected == run("serve", "--port", "70000").exit_code


# -- the group -----------------------------------------------------------------------------


def test_version() -> None:
    """`duraray --version` prints the package version."""
    result = CliRunner().invoke(cli.main, ["--version"])
    expected = (0, True)
    assert expected == (result.exit_code, dr.__version__ in result.stdout)


def test_help_documents_the_exit_codes() -> None:
    """The group's help lists every exit code."""
    text = CliRunner().invoke(cli.main, ["--help"]).stdout
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "124 "):
        assert f"  {code}" in text
