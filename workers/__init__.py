"""Ray actor shells over the pipeline's plain classes, and the job graph that wires them.

Importing this package imports Ray; the CLI imports it only for commands that need it.
"""
