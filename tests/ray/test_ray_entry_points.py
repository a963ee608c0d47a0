"""The ways to run a hub on Ray: App.run, App.start / stop, Client.attach, AsyncClient.

A module-scoped hub (``App.run`` on the session's Ray) serves the tests that only run
work; the lifecycle tests start and stop hubs of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import Iterator

import pytest
import ray

import duraray as dr
from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name
from duraray.runtime.ray.shared_pool import worker_actor_name

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

#: Seconds any single wait may take before it counts as a failure.
TIMEOUT = 60.0

app = dr.App("rt-entry", partitions=2)


@app.activity
def double(ctx: dr.ActivityContext, x: int) -> int:
    """Twice the input."""
    return 2 * x


@app.activity
async def async_triple(ctx: dr.ActivityContext, x: int) -> int:
    """Three times the input, from a coroutine."""
    await asyncio.sleep(0.01)
    return 3 * x


@app.activity(num_cpus=1)
def where_am_i(ctx: dr.ActivityContext) -> dict[str, str | None]:
    """The Ray actor this activity ran in (None for a plain Ray task) and the task."""
    context = ray.get_runtime_context()
    return {"actor_id": context.get_actor_id(), "task_id": context.get_task_id()}


@app.activity(timeout=0.5)
def too_slow(ctx: dr.ActivityContext) -> str:
    """Sleeps far past its timeout."""
    time.sleep(5)
    return "finished"


@app.activity(name="negate")
def renamed_activity(ctx: dr.ActivityContext, x: int) -> int:
    """Minus the input, registered under a name of its own."""
    return -x


@app.orchestration(name="negate-twice")
def renamed_orchestration(ctx: dr.OrchestrationContext, x: int):
    """Calls the renamed activity by function, twice."""
    x = yield ctx.call_activity(renamed_activity, input=x)
    return (yield ctx.call_activity(renamed_activity, input=x + 1))


@app.orchestration
def chain(ctx: dr.OrchestrationContext, x: int):
    """Doubles the input three times, one activity after the other."""
    for _ in range(3):
        x = yield ctx.call_activity(double, input=x)
    return x


@app.orchestration
def fan_out(ctx: dr.OrchestrationContext, n: int):
    """Doubles 0..n-1 in parallel and sums the results."""
    results = yield dr.when_all([ctx.call_activity(double, input=i) for i in range(n)])
    return sum(results)


@app.orchestration
def call_async(ctx: dr.OrchestrationContext, x: int):
    """Calls the coroutine activity."""
    return (yield ctx.call_activity(async_triple, input=x))


@app.orchestration
def call_where_am_i(ctx: dr.OrchestrationContext):
    """Calls the activity that asks for a CPU of its own."""
    return (yield ctx.call_activity(where_am_i))


@app.orchestration
def call_too_slow(ctx: dr.OrchestrationContext):
    """Calls the activity that times out and reports the failure's error type."""
    try:
        yield ctx.call_activity(too_slow)
    except dr.TaskFailedError as exc:
        assert exc.details is not None
        return exc.details.error_type
    return "no failure"


@app.orchestration
def greet_later(ctx: dr.OrchestrationContext, name: str):
    """Waits for a "go" event, then greets its input with the event's data."""
    punctuation = yield ctx.wait_for_external_event("go")
    return f"hello {name}{punctuation}"


def _actor_exists(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _wait_for_actors(names: list[str]) -> None:
    """Poll until every one of ``names`` is a live actor (started on first use)."""
    deadline = time.monotonic() + TIMEOUT
    while missing := [n for n in names if not _actor_exists(n)]:
        assert time.monotonic() < deadline, f"not started within {TIMEOUT} s: {missing}"
        time.sleep(0.05)


def _hub_actor_names(hub: str, partitions: int, workers: int) -> list[str]:
    return [partition_actor_name(hub, i) for i in range(partitions)] + [
        worker_actor_name(hub, j) for j in range(workers)
    ]


def _actor_ids(hub: str, partitions: int) -> list[str]:
    return [
        ray.get_actor(partition_actor_name(hub, i), namespace=NAMESPACE)._actor_id.hex()
        for i in range(partitions)
    ]


@pytest.fixture(scope="module")
def client(ray_session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dr.Client]:
    """The module's hub, run with ``App.run`` on the session's Ray for the whole module."""
    data_dir = tmp_path_factory.mktemp("rt-entry")
    with app.run(data_dir=str(data_dir)) as c:
        yield c


def test_run_chain(client: dr.Client) -> None:
    """A chain of three activities runs to completion on Ray."""
    instance_id = client.schedule_new_orchestration(chain, input=1)
    state = client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, 8)
    assert expected == (state.runtime_status, state.output)


def test_run_fan_out(client: dr.Client) -> None:
    """A fan-out of 100 activities is gathered into the right sum."""
    instance_id = client.schedule_new_orchestration(fan_out, input=100)
    state = client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, 2 * sum(range(100)))
    assert expected == (state.runtime_status, state.output)


def test_custom_names_resolve_on_ray(client: dr.Client) -> None:
    """Code registered under custom names is found by function inside the Ray actors too."""
    instance_id = client.schedule_new_orchestration(renamed_orchestration, input=4)
    state = client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, "negate-twice", 3)
    assert expected == (state.runtime_status, state.name, state.output)


def test_async_activity(client: dr.Client) -> None:
    """An ``async def`` activity is awaited by its worker and its result recorded."""
    instance_id = client.schedule_new_orchestration(call_async, input=5)
    state = client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, 15)
    assert expected == (state.runtime_status, state.output)


def test_resource_activity_runs_in_a_warm_pool_of_its_shape(client: dr.Client) -> None:
    """An activity asking for ``num_cpus=1`` runs in a worker of that shape, outside the
    shared worker pool, and the same warm worker serves the next call."""
    first = client.schedule_new_orchestration(call_where_am_i)
    state = client.wait_for_orchestration_completion(first, timeout=TIMEOUT)
    assert dr.OrchestrationStatus.COMPLETED == state.runtime_status
    shared = set()
    for i in itertools.count():
        try:
            worker = ray.get_actor(worker_actor_name(app.name, i), namespace=NAMESPACE)
        except ValueError:
            break
        shared.add(worker._actor_id.hex())
    assert state.output["actor_id"] is not None
    assert state.output["actor_id"] not in shared
    again = client.schedule_new_orchestration(call_where_am_i)
    second = client.wait_for_orchestration_completion(again, timeout=TIMEOUT)
    assert state.output["actor_id"] == second.output["actor_id"]


def test_activity_timeout_fails_the_task(client: dr.Client) -> None:
    """An activity running past its ``timeout`` fails its task with a TimeoutError."""
    instance_id = client.schedule_new_orchestration(call_too_slow)
    state = client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, "TimeoutError")
    assert expected == (state.runtime_status, state.output)


def test_async_client_round_trip(client: dr.Client) -> None:
    """AsyncClient (wrapping a client, or attached by hub name) round-trips under asyncio."""

    async def main() -> tuple[dr.OrchestrationStatus, int, int, int]:
        aclient = dr.AsyncClient(client)
        instance_id = await aclient.schedule_new_orchestration(chain, input=3)
        state = await aclient.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
        history = await aclient.get_orchestration_history(instance_id)
        completed = sum(isinstance(e, dr.TaskCompleted) for e in history)
        async with dr.AsyncClient.attach(app.name, address=None) as attached:
            seen = await attached.get_orchestration_state(instance_id)
        return state.runtime_status, state.output, completed, seen.output

    expected = (dr.OrchestrationStatus.COMPLETED, 24, 3, 24)
    assert expected == asyncio.run(main())


def test_attach_schedules_by_name(client: dr.Client) -> None:
    """``Client.attach`` reaches the running hub without its code, naming work by string."""
    attached = dr.Client.attach(app.name, address=None)
    instance_id = attached.schedule_new_orchestration("chain", input=2)
    state = attached.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, 16)
    assert expected == (state.runtime_status, state.output)


def test_attach_to_a_hub_that_is_not_running(ray_session) -> None:
    """``Client.attach`` to a hub with no actors raises HubConfigurationError."""
    with pytest.raises(dr.HubConfigurationError, match="not running"):
        dr.Client.attach("rt-no-such-hub", address=None)


resume_app = dr.App("rt-resume", partitions=2, activity_workers=2)
resume_app.add_orchestration(chain)
resume_app.add_orchestration(greet_later)
resume_app.add_activity(double)


def test_run_stops_actors_keeps_data_and_resumes(ray_session, tmp_path) -> None:
    """After ``App.run`` exits its actors are gone and its data stays; a re-run resumes."""
    hub = resume_app.name
    names = _hub_actor_names(hub, partitions=2, workers=2)
    partitions, workers = names[:2], names[2:]
    with resume_app.run(data_dir=str(tmp_path)) as client:
        assert partitions == [n for n in partitions if _actor_exists(n)]
        # The shared workers start when the first cheap activity needs them, not before.
        assert [] == [n for n in workers if _actor_exists(n)]
        done = client.schedule_new_orchestration(chain, input=1)
        client.wait_for_orchestration_completion(done, timeout=TIMEOUT)
        _wait_for_actors(workers)
        waiting = client.schedule_new_orchestration(
            greet_later, input="world", instance_id="rt-resume-waiting"
        )
        client.wait_for_orchestration_start(waiting, timeout=TIMEOUT)

    still_alive: list[str] = []
    assert still_alive == [n for n in names if _actor_exists(n)]
    assert all((tmp_path / hub / f"p{i}").is_dir() for i in range(2))

    with resume_app.run(data_dir=str(tmp_path)) as client:
        statuses = {i: client.get_orchestration_state(i).runtime_status for i in (done, waiting)}
        expected_statuses = {
            done: dr.OrchestrationStatus.COMPLETED,
            waiting: dr.OrchestrationStatus.RUNNING,
        }
        assert expected_statuses == statuses
        client.raise_orchestration_event(waiting, "go", data="!")
        state = client.wait_for_orchestration_completion(waiting, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, "hello world!")
    assert expected == (state.runtime_status, state.output)


detached_app = dr.App("rt-detached", partitions=2, activity_workers=2)
detached_app.add_orchestration(chain)
detached_app.add_activity(double)


def test_start_detached_is_idempotent_and_stops(hubs_to_stop, tmp_path) -> None:
    """``App.start`` twice attaches to the same actors; shutdown_hub and App.stop end them."""
    hub = detached_app.name
    hubs_to_stop.append(hub)
    names = _hub_actor_names(hub, partitions=2, workers=2)

    first = detached_app.start(address=None, data_dir=str(tmp_path), detached=True)
    before = _actor_ids(hub, 2)
    second = detached_app.start(address=None, data_dir=str(tmp_path), detached=True)
    assert before == _actor_ids(hub, 2)
    instance_id = second.schedule_new_orchestration(chain, input=1)
    state = first.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)
    expected = (dr.OrchestrationStatus.COMPLETED, 8)
    assert expected == (state.runtime_status, state.output)
    _wait_for_actors(names)  # the chain's cheap steps started the shared workers

    # A client without the app's code stops the hub; the data stays for the next start.
    dr.Client.attach(hub, address=None).shutdown_hub()
    still_alive: list[str] = []
    assert still_alive == [n for n in names if _actor_exists(n)]
    assert (tmp_path / hub / "p0").is_dir()

    third = detached_app.start(address=None, data_dir=str(tmp_path), detached=True)
    expected_status = dr.OrchestrationStatus.COMPLETED
    assert expected_status == third.get_orchestration_state(instance_id).runtime_status
    assert detached_app.stop()
    assert still_alive == [n for n in names if _actor_exists(n)]
    assert not detached_app.stop()


mismatch_app = dr.App("rt-mismatch", partitions=4)
mismatch_app.add_orchestration(chain)
mismatch_app.add_activity(double)


def test_partition_count_of_a_data_dir_is_fixed(hubs_to_stop, tmp_path) -> None:
    """A data dir created with 4 partitions refuses to run the hub with 2."""
    hubs_to_stop.append(mismatch_app.name)
    with mismatch_app.run(in_process=True, data_dir=str(tmp_path)) as client:
        instance_id = client.schedule_new_orchestration(chain, input=1)
        client.wait_for_orchestration_completion(instance_id, timeout=TIMEOUT)

    with (
        pytest.raises(
            dr.HubConfigurationError, match=r"created with 4 partitions\b.*\b2\b"
        ) as info,
        mismatch_app.run(data_dir=str(tmp_path), partitions=2),
    ):
        pass
    message = str(info.value)
    assert "rt-mismatch" in message
    assert "\n" not in message  # the partition's own message, not a Ray traceback
    assert not _actor_exists(partition_actor_name(mismatch_app.name, 0))
    # The refusal changed nothing: the data still opens with its 4 partitions.
    with mismatch_app.run(in_process=True, data_dir=str(tmp_path)) as client:
        expected = dr.OrchestrationStatus.COMPLETED
        assert expected == client.get_orchestration_state(instance_id).runtime_status


locked_app = dr.App("rt-locked", partitions=2)
locked_app.add_orchestration(chain)
locked_app.add_activity(double)


def test_data_dir_held_by_another_process_is_refused(hubs_to_stop, tmp_path) -> None:
    """Running a hub on a data dir that another owner holds open fails with a clear error."""
    hubs_to_stop.append(locked_app.name)
    with (
        locked_app.run(in_process=True, data_dir=str(tmp_path)),
        pytest.raises(dr.HubConfigurationError, match="in use by another process"),
        locked_app.run(data_dir=str(tmp_path)),
    ):
        pass
    assert not _actor_exists(partition_actor_name(locked_app.name, 0))
    assert os.path.isdir(tmp_path / locked_app.name / "p0")


legacy_app = dr.App("rt-legacy", partitions=1)
legacy_app.add_orchestration(chain)
legacy_app.add_activity(double)


@pytest.mark.parametrize(
    ("legacy_args", "legacy_kwargs"),
    [((2, b"s" * 32), {}), ((b"s" * 32,), {"detached": False})],
    ids=["worker-count", "detached-flag"],
)
def test_a_partition_launched_by_an_older_version_starts_on_this_code(
    ray_session, tmp_path, legacy_args, legacy_kwargs
) -> None:
    """Ray restarts a partition with the arguments it was created with: those of older
    versions (a worker count before the link secret; a ``detached`` flag) still start it."""
    from duraray.config import HubConfig
    from duraray.runtime.ray.actors import PartitionActor

    config = HubConfig(partitions=1, data_dir=str(tmp_path))
    name = partition_actor_name(legacy_app.name, 0)
    actor = PartitionActor.options(name=name, namespace=NAMESPACE).remote(
        legacy_app.name, 0, config, legacy_app.registry, *legacy_args, **legacy_kwargs
    )
    try:
        info = ray.get(actor.describe.remote(), timeout=TIMEOUT)
        secret = ray.get(actor.link_secret.remote(), timeout=TIMEOUT)
    finally:
        ray.kill(actor, no_restart=True)
    assert (0, b"s" * 32) == (info["partition"], secret)
