"""Where a hub's partitions run: ``Placement.plan`` without a Ray cluster.

Each fake node has its own disk (a temp dir standing for the same ``data_dir`` path on
that node); ``ray.nodes()``, the launching node and the cross-node probe are replaced, so
the rules are checked in milliseconds: a hub keeps its placement, nothing is created
afresh where data already exists on some node, and a partly missing hub is refused.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

import pytest

from duraray import HubConfigurationError
from duraray.config import HubConfig
from duraray.runtime.ray import placement as placement_module
from duraray.runtime.ray.placement import PLACEMENT_FILE, Placement

HUB = "h"


class FakeCluster:
    """Nodes with their own disks; ``at(node)`` makes it the launching node."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.nodes: list[dict[str, Any]] = []
        self.here = ""
        self.probed: list[list[str]] = []
        monkeypatch.setattr("ray.nodes", lambda: self.nodes)
        monkeypatch.setattr(
            "ray.get_runtime_context",
            lambda: types.SimpleNamespace(get_node_id=lambda: self.here),
        )
        monkeypatch.setattr(Placement, "_probe", self._probe)

    def add(self, node: str, ip: str, cpus: float = 2.0) -> None:
        self.nodes.append(
            {
                "NodeID": node,
                "Alive": True,
                "Resources": {"CPU": cpus} if cpus else {},
                "NodeManagerAddress": ip,
            }
        )
        self.disk(node).mkdir(parents=True, exist_ok=True)

    def remove(self, node: str) -> None:
        self.nodes = [n for n in self.nodes if n["NodeID"] != node]

    def disk(self, node: str) -> Path:
        return self.tmp_path / node

    def at(self, node: str) -> None:
        self.here = node

    def _probe(self, hub_dir: str, nodes: list[str]) -> dict[str, Any]:
        self.probed.append(list(nodes))
        relative = os.path.relpath(hub_dir, self.disk(self.here))
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in self.nodes}
        return {
            n: (ips[n], placement_module._hub_data(str(self.disk(n) / relative))) for n in nodes
        }

    def place(self, placement: str, partitions: int = 4) -> tuple[list[str], bool]:
        config = HubConfig(
            partitions=partitions, data_dir=str(self.disk(self.here)), placement=placement
        )
        return Placement(HUB, config).plan()

    def create_stores(self, placement: list[str]) -> None:
        """What the partitions do on their first start: a store on their own node."""
        for index, node in enumerate(placement):
            store = self.disk(node) / HUB / f"p{index}"
            store.mkdir(parents=True, exist_ok=True)
            (store / "data.mdb").write_bytes(b"")

    def mark_created(self, placement: list[str]) -> None:
        """What a launch records once every partition opened its store."""
        config = HubConfig(partitions=len(placement), data_dir=str(self.disk(self.here)))
        Placement(HUB, config).record(placement, created=True)

    def launch(self, placement: str, partitions: int = 4) -> list[str]:
        nodes, existing = self.place(placement, partitions)
        if not existing:
            self.create_stores(nodes)
            if placement == "spread":
                self.mark_created(nodes)
        return nodes


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    c = FakeCluster(tmp_path, monkeypatch)
    c.add("A", "10.0.0.1")
    c.add("B", "10.0.0.2")
    c.add("C", "10.0.0.3")
    c.at("A")
    return c


def test_local_puts_every_partition_on_the_launching_node(cluster: FakeCluster) -> None:
    """placement='local': all on the launching node; a fresh hub expects no data."""
    assert (["A"] * 4, False) == cluster.place("local")
    cluster.create_stores(["A"] * 4)
    assert (["A"] * 4, True) == cluster.place("local")


def test_spread_round_robins_from_the_launching_node(cluster: FakeCluster) -> None:
    """spread: the launching node first, then the others in a fixed order."""
    cluster.at("B")
    assert (["B", "A", "C", "B"], False) == cluster.place("spread")
    recorded = json.loads((cluster.disk("B") / HUB / PLACEMENT_FILE).read_text())
    assert recorded["created"] is False
    assert ["10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.2"] == [
        p["node_ip"] for p in recorded["partitions"]
    ]


def test_a_created_spread_hub_keeps_its_placement(cluster: FakeCluster) -> None:
    """Later launches put each partition where its data is and expect that data."""
    first = cluster.launch("spread")
    cluster.add("D", "10.0.0.4")  # a new node changes nothing for an existing hub
    assert (first, True) == cluster.place("spread")


def test_a_restarted_node_is_found_by_its_address(cluster: FakeCluster) -> None:
    """A node that came back with a new id (same address) gets its partitions back."""
    first = cluster.launch("spread")
    cluster.remove("C")
    cluster.add("C2", "10.0.0.3")
    placement, existing = cluster.place("spread")
    assert existing
    assert [("C2" if n == "C" else n) for n in first] == placement
    recorded = json.loads((cluster.disk("A") / HUB / PLACEMENT_FILE).read_text())
    assert placement == [p["node_id"] for p in recorded["partitions"]]


def test_a_missing_node_stops_the_launch(cluster: FakeCluster) -> None:
    """A recorded node that is gone (no node at its address): refused, naming it."""
    cluster.launch("spread")
    cluster.remove("C")
    with pytest.raises(HubConfigurationError, match=r"partition 2 .* 10\.0\.0\.3"):
        cluster.place("spread")


def test_a_launching_node_without_cpus_still_finds_its_partitions(
    cluster: FakeCluster,
) -> None:
    """A head started with no CPUs holds partitions; relaunching from it works."""
    cluster.add("H", "10.0.0.9", cpus=0)
    cluster.at("H")
    first = cluster.launch("spread")
    assert "H" == first[0]
    assert "H" not in first[1:3]  # other targets are nodes with CPUs
    assert (first, True) == cluster.place("spread")


def test_several_nodes_on_one_address_pick_one_of_them(cluster: FakeCluster) -> None:
    """Nodes sharing a host share its disk: a restarted one is found among them."""
    cluster.add("A2", "10.0.0.1")
    first = cluster.launch("spread")
    assert ["A", "A2", "B", "C"] == first
    cluster.remove("A2")
    cluster.add("A3", "10.0.0.1")
    placement, existing = cluster.place("spread")
    assert existing
    assert ["A", "A", "B", "C"] == placement  # the first of the same-address nodes


def test_the_other_mode_is_refused(cluster: FakeCluster) -> None:
    """A hub keeps the placement it was created with."""
    cluster.launch("spread")
    with pytest.raises(HubConfigurationError, match="placement='spread'"):
        cluster.place("local")


def test_spread_over_a_local_hub_is_refused(cluster: FakeCluster) -> None:
    """Local data but no placement record: spread would create a second hub; refused."""
    cluster.launch("local")
    with pytest.raises(HubConfigurationError, match=r"no placement\.json"):
        cluster.place("spread")


def test_launching_from_a_node_without_the_data_is_refused(cluster: FakeCluster) -> None:
    """A hub created from A, launched from D (no data there): the probe finds A's data;
    nothing is created afresh (for either placement)."""
    cluster.launch("spread")
    cluster.add("D", "10.0.0.4")
    cluster.at("D")
    for mode in ("spread", "local"):
        with pytest.raises(HubConfigurationError, match="already has data on node"):
            cluster.place(mode)
    assert not (cluster.disk("D") / HUB).exists()


def test_launching_local_from_a_node_holding_one_partition_expects_all(
    cluster: FakeCluster,
) -> None:
    """B holds p1 of a spread hub: a 'local' launch from B expects every partition's data
    (so p0, p2, p3 refuse to start empty) instead of creating a mixed hub."""
    cluster.launch("spread")  # from A: [A, B, C, A]
    cluster.at("B")
    assert (["B"] * 4, True) == cluster.place("local")
    with pytest.raises(HubConfigurationError, match="from another node"):
        cluster.place("spread")


def test_an_unfinished_first_launch_is_planned_again(cluster: FakeCluster) -> None:
    """placement.json with created=false (the first launch died before every partition
    opened its store) does not bind: the next launch plans afresh, in either mode."""
    cluster.place("spread")  # records created=False, then "dies"
    assert (["A"] * 4, False) == cluster.place("local")
    assert not (cluster.disk("A") / HUB / PLACEMENT_FILE).exists()


def test_a_malformed_placement_file_is_a_clear_error(cluster: FakeCluster) -> None:
    """A placement.json that is not what duraray wrote: HubConfigurationError, not KeyError."""
    path = cluster.disk("A") / HUB / PLACEMENT_FILE
    path.parent.mkdir(parents=True)
    for text in (
        "{",
        json.dumps({"created": True}),
        json.dumps({"created": True, "partitions": [{}]}),
    ):
        path.write_text(text)
        with pytest.raises(HubConfigurationError, match="cannot read the placement"):
            cluster.place("spread")


def test_a_fresh_hub_on_one_node_needs_no_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no other node there is nothing to probe."""
    single = FakeCluster(tmp_path, monkeypatch)
    single.add("A", "10.0.0.1")
    single.at("A")
    assert (["A"] * 2, False) == single.place("local", partitions=2)
    assert [] == single.probed
