"""A resumable ``Client.map`` job, run as a subprocess by ``test_map_resume.py``.

Maps ``job_item`` over N items with deterministic ids (``resume-job-<index>``) on an LMDB
data dir. Every activity execution appends the item's index to an execution log before
working, so the counts survive the process being killed; every output the map yields is
appended to the output file as one JSON line. At the end, the instance records (status,
completion time) go to the states file, for the test to tell what completed before a kill.

    python map_job.py DATA_DIR LOG OUT STATES [--items 60] [--delay 0.1] [--max-in-flight 4] [--ray]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import duraray as dr

app = dr.App("pipelines-resume", partitions=2)

PREFIX = "resume-job"


def append_line(path: str, line: str) -> None:
    """Append one line with a single write(), so a SIGKILL cannot leave half of it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@app.activity
def work(ctx: dr.ActivityContext, item: dict[str, Any]) -> int:
    """Log the execution, take a while, return the square of the index."""
    append_line(item["log"], str(item["index"]))
    time.sleep(item["delay"])
    return item["index"] ** 2


@app.orchestration
def job_item(ctx: dr.OrchestrationContext, item: dict[str, Any]):
    """One activity per item."""
    square = yield ctx.call_activity(work, input=item)
    return {"index": item["index"], "square": square}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir")
    parser.add_argument("log")
    parser.add_argument("out")
    parser.add_argument("states")
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--max-in-flight", type=int, default=4)
    parser.add_argument("--ray", action="store_true", help="run on a local Ray, not in process")
    args = parser.parse_args(argv)

    inputs = [{"index": i, "log": args.log, "delay": args.delay} for i in range(args.items)]
    # Each run writes its own output file from scratch: the items it yields, in order.
    open(args.out, "w").close()
    with app.run(data_dir=args.data_dir, in_process=not args.ray) as client:
        for output in client.map(
            job_item,
            inputs,
            instance_id=PREFIX,
            max_in_flight=args.max_in_flight,
            progress=False,
        ):
            append_line(args.out, json.dumps(output))
        states = []
        for i in range(args.items):
            state = client.get_orchestration_state(f"{PREFIX}-{i}", fetch_payloads=False)
            states.append(
                {
                    "index": i,
                    "status": state.runtime_status.value,
                    "completed_at": state.completed_at.isoformat() if state.completed_at else None,
                }
            )
    with open(args.states, "w") as fh:
        json.dump(states, fh)


if __name__ == "__main__":
    main()
