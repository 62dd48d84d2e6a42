"""Executors run a plan's pending jobs: `local` (in-process, the default) and
`ray` (a pool of Ray actors). Both use the same grouping and batching, write the
same images to the same run folder, and only the driver writes the ledger."""

EXECUTORS = ("local", "ray")
