"""Ray Data integration: a durable orchestration per row, inside ``Dataset.map_batches``.

Each row becomes one orchestration instance with a deterministic id (from an id column,
or from the row's content), so a pipeline that crashes halfway and runs again re-uses
every row that already completed. The orchestration's activities run wherever Ray puts
them, with the resources they ask for (``@app.activity(num_gpus=1)``).

    import ray, duraray.data as ddata
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = ddata.map_dataset(ds, hub="shop", orchestrator="enrich", id_column="id",
                            id_prefix="enrich-v1", input_columns=["text"])

Needs the ``data`` extra (pandas, pyarrow) and a hub running on the cluster
(``app.start(...)`` or ``app.run()`` in the driver).
"""

from __future__ import annotations

import hashlib
from typing import Any

from duraray.runtime.engine import codec

__all__ = ["DurableBatchMapper", "map_dataset", "row_instance_id"]


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain Python values (what the codec carries)."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return value


def row_instance_id(prefix: str, row: dict[str, Any], id_column: str | None) -> str:
    """The instance id of a row: ``<prefix>-<id column>``, or a digest of the row."""
    if id_column is not None:
        return f"{prefix}-{row[id_column]}"
    digest = hashlib.sha256(codec.encode(row)).hexdigest()[:24]
    return f"{prefix}-{digest}"


class DurableBatchMapper:
    """A Ray Data batch UDF: runs ``orchestrator`` for every row, adds its output column.

    Use with ``Dataset.map_batches(DurableBatchMapper, fn_constructor_kwargs=..., ...)`` or
    through ``map_dataset``. Rows whose orchestration fails follow ``on_error``: "raise"
    fails the batch, "null" puts None in the output column and the failure message in
    ``<output_column>_error``.

    ``per="batch"`` runs ONE orchestration per batch instead: its input is the list of the
    batch's row inputs and its output must be a list of the same length (one value per
    row). Its id derives from the batch's row ids, so a re-run with the same batching
    re-uses it.
    """

    def __init__(
        self,
        hub: str,
        orchestrator: str,
        *,
        id_prefix: str,
        id_column: str | None = None,
        input_columns: list[str] | None = None,
        output_column: str = "output",
        max_in_flight: int = 1000,
        on_error: str = "raise",
        address: str | None = "auto",
        timeout: float | None = None,
        per: str = "row",
    ) -> None:
        from duraray.runtime.client.sync import Client

        if on_error not in ("raise", "null"):
            raise ValueError("on_error must be 'raise' or 'null'")
        if per not in ("row", "batch"):
            raise ValueError("per must be 'row' or 'batch'")
        self.per = per
        self.client = Client.attach(hub, address=address)
        self.orchestrator = orchestrator
        self.id_prefix = id_prefix
        self.id_column = id_column
        self.input_columns = input_columns
        self.output_column = output_column
        self.max_in_flight = max_in_flight
        self.on_error = on_error
        self.timeout = timeout

    def _rows(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        columns = list(batch)
        size = len(batch[columns[0]]) if columns else 0
        return [{c: _plain(batch[c][i]) for c in columns} for i in range(size)]

    def _input(self, row: dict[str, Any]) -> Any:
        if self.input_columns is None:
            return row
        if len(self.input_columns) == 1:
            return row[self.input_columns[0]]
        return {c: row[c] for c in self.input_columns}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from duraray.runtime.client.mapping import MapFailure

        rows = self._rows(batch)
        ids = [row_instance_id(self.id_prefix, row, self.id_column) for row in rows]
        inputs = [self._input(row) for row in rows]
        if self.per == "batch":
            return self._per_batch(batch, ids, inputs)
        outputs = list(
            self.client.map(
                self.orchestrator,
                inputs,
                instance_id=lambda index, _value: ids[index],
                max_in_flight=self.max_in_flight,
                progress=False,
                on_error="raise" if self.on_error == "raise" else "collect",
                timeout=self.timeout,
            )
        )
        out = dict(batch)
        values = np.empty(len(outputs), dtype=object)
        errors = np.empty(len(outputs), dtype=object)
        for i, value in enumerate(outputs):
            if isinstance(value, MapFailure):
                values[i] = None
                errors[i] = value.failure.message if value.failure else value.status.value
            else:
                values[i] = value
                errors[i] = None
        out[self.output_column] = values
        if self.on_error == "null":
            out[f"{self.output_column}_error"] = errors
        out[f"{self.output_column}_instance_id"] = np.array(ids, dtype=object)
        return out

    def _per_batch(
        self, batch: dict[str, Any], ids: list[str], inputs: list[Any]
    ) -> dict[str, Any]:
        import numpy as np

        from duraray.runtime.client.mapping import MapFailure

        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:24]
        batch_id = f"{self.id_prefix}-batch-{digest}"
        [result] = list(
            self.client.map(
                self.orchestrator,
                [inputs],
                instance_id=lambda index, _value: batch_id,
                progress=False,
                on_error="raise" if self.on_error == "raise" else "collect",
                timeout=self.timeout,
            )
        )
        out = dict(batch)
        values = np.empty(len(ids), dtype=object)
        if isinstance(result, MapFailure):
            values[:] = None
            if self.on_error == "null":
                message = result.failure.message if result.failure else result.status.value
                out[f"{self.output_column}_error"] = np.array([message] * len(ids), dtype=object)
        else:
            if not isinstance(result, list | tuple) or len(result) != len(ids):
                raise ValueError(
                    f"orchestration {self.orchestrator!r} must return one output per row "
                    f"({len(ids)}), got {type(result).__name__}"
                )
            for i, value in enumerate(result):
                values[i] = value
            if self.on_error == "null":
                out[f"{self.output_column}_error"] = np.array([None] * len(ids), dtype=object)
        out[self.output_column] = values
        out[f"{self.output_column}_instance_id"] = np.array([batch_id] * len(ids), dtype=object)
        return out


def map_dataset(
    dataset: Any,
    *,
    hub: str,
    orchestrator: str,
    id_prefix: str,
    id_column: str | None = None,
    input_columns: list[str] | None = None,
    output_column: str = "output",
    batch_size: int = 256,
    concurrency: int = 2,
    max_in_flight: int = 1000,
    on_error: str = "raise",
    address: str | None = "auto",
    timeout: float | None = None,
    per: str = "row",
) -> Any:
    """``dataset`` with one durable orchestration run per row (or per batch, ``per="batch"``).

    Lazy, like any transform. Adds ``output_column`` (the orchestration's output) and
    ``<output_column>_instance_id``. ``concurrency`` mappers (actors) wait on the hub.
    """
    import ray.data

    return dataset.map_batches(
        DurableBatchMapper,
        fn_constructor_kwargs={
            "hub": hub,
            "orchestrator": orchestrator,
            "id_prefix": id_prefix,
            "id_column": id_column,
            "input_columns": input_columns,
            "output_column": output_column,
            "max_in_flight": max_in_flight,
            "on_error": on_error,
            "address": address,
            "timeout": timeout,
            "per": per,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        batch_format="numpy",
        # The mapper only waits on the hub: it needs no CPU of its own.
        num_cpus=0,
    )
