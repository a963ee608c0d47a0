"""The pure entity layer: entity ids, the batch executor and the lock protocol."""
