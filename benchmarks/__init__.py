"""duraray's benchmark scripts (plain scripts, see README.md); not installed with duraray."""
