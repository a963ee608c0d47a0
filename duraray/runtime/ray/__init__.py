"""The Ray shell: thin actors around the engine and the code that finds them.

- ``actors``: the partition actor (one ``PartitionCore`` each) and the activity workers;
- ``manager``: launching, attaching to and stopping a hub, and the client's transport;
- ``placement``: which node each partition runs on, recorded in ``placement.json``;
- ``peerlink``: direct TCP links between partition actors.

May import: the engine, the pure layers, ``ray``. Holds no orchestration logic and never
imports ``duraray.runtime.client``, ``http`` or ``cli``.
"""
