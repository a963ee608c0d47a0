"""The duraray runtime: partitions, their storage, and the processes that host them."""
