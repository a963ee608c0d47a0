"""The pure orchestration layer: history model, tasks, context and replay executor.

Nothing here performs I/O, reads a clock or imports Ray or LMDB.
"""
