"""A durable scoring pipeline: a model loaded once per worker, data passed by reference.

    python examples/model_pipeline/pipeline.py [--data-dir DIR] [--docs 24] [--report FILE]

Two patterns every ML pipeline on duraray needs:

- **The model loads once per worker process.** ``Scorer`` is an activity *class*: each
  worker process of its pool constructs it once (here: reads the model's weights from a
  file; in real code: loads a checkpoint onto a GPU) and then calls it for every document
  it is given. ``@app.activity(num_cpus=1, max_workers=2)`` runs it in a warm pool of at
  most two workers, each holding one CPU (``num_gpus=0.25`` would pack four on a GPU).
- **Payloads travel by reference.** Inputs, outputs and history are kept in the hub's
  log, limited to ``max_payload_bytes`` (16 MiB), so tensors, images and documents do
  not travel by value: the orchestration passes paths (in real code: URIs in shared
  storage, e.g. ``s3://...``), each activity reads its input from there and writes its
  output next to it, and returns the output's path.

Run it twice: the second run finds every document already scored (same instance ids)
and returns at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import duraray as dr

app = dr.App("model-pipeline", partitions=2)

WORDS = {"good": 1.0, "great": 2.0, "fine": 0.5, "bad": -1.0, "awful": -2.0, "slow": -0.5}


@app.activity(num_cpus=1, max_workers=2)
class Scorer:
    """Scores one document with a tiny linear model; built once per worker process."""

    def __init__(self) -> None:
        # The expensive part, done once per process: load the weights (a checkpoint).
        weights = Path(os.environ.get("MODEL_WEIGHTS", "weights.json"))
        self.weights: dict[str, float] = json.loads(weights.read_text())
        self.pid = os.getpid()
        with open(weights.with_name("loads.log"), "a") as log:
            log.write(f"{self.pid}\n")  # one line per load: the report counts them

    def __call__(self, ctx: dr.ActivityContext, doc_path: str) -> str:
        text = Path(doc_path).read_text().lower().split()
        score = sum(self.weights.get(word, 0.0) for word in text)
        out = Path(doc_path).with_suffix(".score.json")
        out.write_text(json.dumps({"doc": doc_path, "score": score, "pid": self.pid}))
        return str(out)  # a reference to the result, not the result


@app.orchestration
def score_all(
    ctx: dr.OrchestrationContext, doc_paths: list[str]
) -> Generator[dr.Task[Any], Any, list[str]]:
    """Scores every document at once; returns the paths of the scores."""
    scores: list[str] = yield dr.when_all([ctx.call_activity(Scorer, input=p) for p in doc_paths])
    return scores


def make_docs(folder: Path, count: int) -> list[str]:
    """A sample corpus: ``count`` short reviews, one file each."""
    folder.mkdir(parents=True, exist_ok=True)
    phrases = ["good and fine", "awful and slow", "great great good", "bad", "fine"]
    paths = []
    for i in range(count):
        path = folder / f"doc-{i:03}.txt"
        path.write_text(phrases[i % len(phrases)])
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="./.duraray")
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--report", default=None, help="write a JSON report here")
    args = parser.parse_args(argv)
    work = Path(args.data_dir).resolve() / "model-pipeline-files"
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "weights.json"
    weights.write_text(json.dumps(WORDS))
    # Worker processes read the weights' location from their environment.
    os.environ["MODEL_WEIGHTS"] = str(weights)
    docs = make_docs(work / "docs", args.docs)
    with app.run(data_dir=args.data_dir) as client:
        iid = client.schedule_new_orchestration(
            score_all,
            input=docs,
            instance_id=f"score-{args.docs}",
            reuse_id_policy=dr.ReuseIdPolicy.IGNORE_IF_RUNNING,
        )
        state = client.wait_for_orchestration_completion(iid, timeout=300)
        state.raise_if_failed()
    scores = [json.loads(Path(p).read_text()) for p in state.output]
    loads = (work / "loads.log").read_text().split() if (work / "loads.log").exists() else []
    pids = sorted({s["pid"] for s in scores})
    total = sum(s["score"] for s in scores)
    print(
        f"scored {len(scores)} documents in {len(pids)} worker process(es); the model was "
        f"loaded {len(loads)} time(s), once in each worker process the pool started; "
        f"total score {total:+.1f}"
    )
    if args.report:
        Path(args.report).write_text(
            json.dumps({"docs": len(scores), "pids": pids, "loads": loads, "total": total})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
