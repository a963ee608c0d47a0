"""``duraray demo``: the sample app on the embedded default, narrated."""

from __future__ import annotations

import os
import time

import click

from duraray.runtime.cli._app import _say, main


@main.command()
@click.option(
    "--data-dir", default="./.duraray", show_default=True, help="Where the hub keeps its data."
)
@click.option("--address", default=None, help="Ray address (default: start a local Ray).")
def demo(data_dir: str, address: str | None) -> None:
    """Run the sample app on the embedded default and tell what happens."""

    import ray

    from duraray.demo import PENDING_APPROVAL_ID, app
    from duraray.orchestrations.history import OrchestrationStatus as S
    from duraray.runtime.engine.routing import partition_for
    from duraray.runtime.ray.actors import NAMESPACE, partition_actor_name

    data_dir = os.path.abspath(data_dir)
    _say(f"duraray demo: starting hub 'demo' ({app.config.partitions} partitions) on local Ray")
    started = time.perf_counter()
    # Console log lines for the hub's actors too: the demo is read by a person.
    with app.run(address=address, data_dir=data_dir, log_format="console") as client:
        _say(f"  hub up in {time.perf_counter() - started:.1f} s; data in {data_dir}/demo")

        earlier = client.get_all_instances(fetch_payloads=False)
        if earlier:
            unfinished = [s for s in earlier if not s.runtime_status.is_terminal]
            _say(
                f"  found {len(earlier)} instances from earlier runs in the data dir "
                f"({len(unfinished)} unfinished): resuming them"
            )
        waiting = client.get_orchestration_state(PENDING_APPROVAL_ID)
        if waiting is not None and waiting.runtime_status is S.RUNNING:
            _say("  the approval left waiting by the last run is still there: approving it now")
            client.raise_orchestration_event(
                PENDING_APPROVAL_ID, "approve", data="demo (second run)"
            )
            state = client.wait_for_orchestration_completion(PENDING_APPROVAL_ID, timeout=60)
            _say(f"    -> {state.runtime_status.value}: {state.output}")

        _say("1. hello_cities: a chain of three activities")
        iid = client.schedule_new_orchestration(
            "hello_cities", input=["Tokyo", "Seattle", "London"]
        )
        state = client.wait_for_orchestration_completion(iid, timeout=60)
        _say(f"   -> {state.runtime_status.value}: {state.output}")

        n = 1000
        _say(f"2. sum_of_squares: fan-out of {n} activities with when_all")
        t0 = time.perf_counter()
        iid = client.schedule_new_orchestration("sum_of_squares", input=n)
        state = client.wait_for_orchestration_completion(iid, timeout=120)
        elapsed = time.perf_counter() - t0
        _say(
            f"   -> {state.runtime_status.value}: {state.output} ({n / elapsed:,.0f} activities/s)"
        )

        _say("3. approval: an orchestration waiting for a human")
        iid = client.schedule_new_orchestration("approval", input={"item": "laptop"})
        waiting = client.wait_for_orchestration_start(iid, timeout=60)
        _say(f"   status {waiting.runtime_status.value}, custom status {waiting.custom_status!r}")
        client.raise_orchestration_event(iid, "approve", data="alice")
        state = client.wait_for_orchestration_completion(iid, timeout=60)
        _say(f"   -> approved: {state.output}")

        _say("4. crash_survivor: killing its partition actor in the middle of a chain")
        iid = client.schedule_new_orchestration("crash_survivor", input=10)
        time.sleep(0.7)  # let a few steps run before the crash
        index = partition_for(iid, app.config.partitions)
        actor = ray.get_actor(partition_actor_name("demo", index), namespace=NAMESPACE)
        ray.kill(actor, no_restart=False)
        _say(f"   killed partition p{index}; Ray restarts it and it recovers from its LMDB log")
        state = client.wait_for_orchestration_completion(iid, timeout=120)
        history = client.get_orchestration_history(iid)
        completions = sum(1 for e in history if type(e).__name__ == "TaskCompleted")
        _say(
            f"   -> {state.runtime_status.value}: {state.output} "
            f"({completions} results recorded, each exactly once)"
        )

        existing = client.get_orchestration_state(PENDING_APPROVAL_ID)
        if existing is None or existing.runtime_status.is_terminal:
            client.schedule_new_orchestration(
                "approval",
                input={"item": "left for the next run"},
                instance_id=PENDING_APPROVAL_ID,
            )
            client.wait_for_orchestration_start(PENDING_APPROVAL_ID, timeout=60)
            _say(
                f"5. left approval {PENDING_APPROVAL_ID!r} waiting: run `duraray demo` again "
                "and it resumes from the data dir"
            )
        total = len(client.get_all_instances(fetch_payloads=False))
        _say(f"done: {total} instances stored in {data_dir}/demo (delete the folder to start over)")
