"""Placement: which Ray node each partition of a hub runs on.

A partition lives on the node that holds its data. With ``placement="local"`` every
partition runs on the launching node; with ``placement="spread"`` they go round-robin
over the cluster's nodes and the choice is recorded in ``<data_dir>/<hub>/placement.json``
(written before the first start, marked ``created`` once every store exists) so a relaunch
finds each partition's data where it left it, even when a node restarted under a new id.
"""

from __future__ import annotations

import json
import os
from typing import Any

import structlog

from duraray._errors import HubConfigurationError
from duraray.config import HubConfig

log = structlog.get_logger("duraray.placement")

PLACEMENT_FILE = "placement.json"


def _hub_data(hub_dir: str) -> list[str]:
    """What of a hub's data exists under ``hub_dir`` on this node (its placement record and
    partition stores), as paths relative to it."""
    if not os.path.isdir(hub_dir):
        return []
    found = [PLACEMENT_FILE] if os.path.exists(os.path.join(hub_dir, PLACEMENT_FILE)) else []
    for name in sorted(os.listdir(hub_dir)):
        if os.path.exists(os.path.join(hub_dir, name, "data.mdb")):
            found.append(os.path.join(name, "data.mdb"))
    return found


class Placement:
    """The placement of one hub's partitions under one configuration."""

    def __init__(self, hub: str, config: HubConfig) -> None:
        self.hub = hub
        self.config = config

    @property
    def path(self) -> str:
        """Where the placement record lives: ``<data_dir>/<hub>/placement.json``."""
        return os.path.join(self.config.data_dir, self.hub, PLACEMENT_FILE)

    def plan(self) -> tuple[list[str], bool]:
        """The Ray node id each partition runs on, and whether the hub already exists (so
        every partition must find its data there rather than start an empty store)."""
        import ray

        here = ray.get_runtime_context().get_node_id()
        hub_dir = os.path.join(self.config.data_dir, self.hub)
        path = self.path
        recorded = self.read(path)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        if recorded is None or not recorded.get("created"):
            if recorded is not None:
                os.remove(path)  # a first launch that never finished: plan afresh
            local_data = _hub_data(hub_dir)
            if not local_data:
                self._refuse_data_elsewhere(here, [n["NodeID"] for n in alive])
            if self.config.placement == "local":
                return [here] * self.config.partitions, bool(local_data)
            if local_data:
                raise HubConfigurationError(
                    f"hub {self.hub!r} has partition data in {hub_dir} on this node but no "
                    f"{PLACEMENT_FILE}: either it was created with placement='local' (launch "
                    "it so), or with placement='spread' from another node (launch it from the "
                    f"node that holds its {PLACEMENT_FILE})"
                )
            # This node first, then the others with CPUs in a fixed order: partition 0
            # (and, with fewer nodes than partitions, every len(nodes)-th one) stays
            # where the launch happens.
            others = sorted(
                n["NodeID"]
                for n in alive
                if n["NodeID"] != here and n.get("Resources", {}).get("CPU")
            )
            ids = [here, *others]
            placement = [ids[i % len(ids)] for i in range(self.config.partitions)]
            self.record(placement, created=False)
            return placement, False
        if self.config.placement == "local":
            raise HubConfigurationError(
                f"hub {self.hub!r} was created with placement='spread': its partitions' "
                f"data is on several nodes (see {path}); launch it with placement='spread'"
            )
        entries = recorded["partitions"]
        if len(entries) != self.config.partitions:
            raise HubConfigurationError(
                f"hub {self.hub!r} has {len(entries)} partitions (see {path}), not "
                f"{self.config.partitions}"
            )
        # Recorded nodes are looked up among all alive nodes: the launching node (a head
        # started with no CPUs, say) holds partitions without offering CPUs.
        alive_ids = {n["NodeID"] for n in alive}
        by_ip: dict[str, list[str]] = {}
        for node in alive:
            by_ip.setdefault(node.get("NodeManagerAddress", ""), []).append(node["NodeID"])
        placement = []
        for index, entry in enumerate(entries):
            if entry["node_id"] in alive_ids:
                placement.append(entry["node_id"])
                continue
            # A node that restarted has a new id: find it again by its address. Several
            # nodes on one host share its disk, so any of them will do (and a partition
            # that does not find its data there refuses to start).
            same = sorted(by_ip.get(entry["node_ip"], []))
            if not same:
                raise HubConfigurationError(
                    f"partition {index} of hub {self.hub!r} keeps its data on node "
                    f"{entry['node_ip']} ({entry['node_id']}), which is not in the cluster; "
                    "start that node (with its disk) and launch again"
                )
            placement.append(same[0])
        if placement != [e["node_id"] for e in entries]:
            self.record(placement, created=True)
        return placement, True

    def read(self, path: str) -> dict[str, Any] | None:
        if not os.path.exists(path):
            return None
        try:
            with open(path) as fh:
                recorded = json.load(fh)
            entries = recorded["partitions"]
            if not isinstance(recorded.get("created"), bool) or not all(
                isinstance(e["node_id"], str) and isinstance(e["node_ip"], str) for e in entries
            ):
                raise ValueError("unexpected field types")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HubConfigurationError(
                f"cannot read the placement of hub {self.hub!r} from {path}: {exc}"
            ) from None
        result: dict[str, Any] = recorded
        return result

    def _refuse_data_elsewhere(self, here: str, nodes: list[str]) -> None:
        """Before creating a hub afresh, make sure no other node already holds its data
        (a launch from the wrong node would otherwise start empty beside the real one)."""
        others = [n for n in nodes if n != here]
        if not others:
            return
        hub_dir = os.path.join(self.config.data_dir, self.hub)
        for node, (address, found) in self._probe(hub_dir, others).items():
            if found:
                raise HubConfigurationError(
                    f"hub {self.hub!r} already has data on node {address or node} "
                    f"({', '.join(found)}); launch it from the node that holds "
                    f"{os.path.join(hub_dir, PLACEMENT_FILE)}, or for placement='local' from "
                    "the node that holds its data dir"
                )

    def _probe(self, hub_dir: str, nodes: list[str]) -> dict[str, tuple[str, list[str]]]:
        """``_hub_data(hub_dir)`` on each node (a zero-CPU task pinned there), with the
        node's address; nodes that do not answer within a minute are left out."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        look = ray.remote(num_cpus=0)(_hub_data)
        refs = {
            look.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(hub_dir): node
            for node in nodes
        }
        ready, missing = ray.wait(list(refs), num_returns=len(refs), timeout=60)
        if missing:
            log.warning("some nodes did not answer the data-dir probe", nodes=len(missing))
        ips = {n["NodeID"]: n.get("NodeManagerAddress", "") for n in ray.nodes()}
        out: dict[str, tuple[str, list[str]]] = {}
        for ref in ready:
            try:
                out[refs[ref]] = (ips.get(refs[ref], ""), ray.get(ref))
            except Exception as exc:  # a node that died meanwhile holds nothing we can use
                log.warning("data-dir probe failed", error=str(exc))
        return out

    def record(self, placement: list[str], *, created: bool) -> None:
        import ray

        ips = {n["NodeID"]: n.get("NodeManagerAddress", "") for n in ray.nodes()}
        path = self.path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        body = {
            "version": 1,
            "hub": self.hub,
            # False until every partition has opened its store once: a launch that died
            # before that may create the stores afresh.
            "created": created,
            "partitions": [{"node_id": n, "node_ip": ips.get(n, "")} for n in placement],
        }
        temp = f"{path}.tmp"
        with open(temp, "w") as fh:
            json.dump(body, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
