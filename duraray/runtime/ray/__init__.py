"""The Ray shell: thin actors around the engine and the code that finds them.

- ``actors``: the partition actor (one ``PartitionCore`` each) and activity tasks;
- ``express``: small instances' inline steps, run first and waited for by the next batch;
- ``shared_pool``: the shared activity workers, started on first use;
- ``pools``: the hub's pools actor, owner of the warm worker pools (shaped and shared);
- ``demand``: the CPUs the activities want, told to the autoscaler;
- ``ledger``: one actor per cluster adding up every hub's demand into Ray's one request;
- ``manager``: launching, attaching to and stopping a hub, and the client's transport;
- ``placement``: which node each partition runs on, recorded in ``placement.json``;
- ``peerlink``: direct TCP links between partition actors.

May import: the engine, the pure layers, ``ray``. Holds no orchestration logic and never
imports ``duraray.runtime.client``, ``http`` or ``cli``.
"""
