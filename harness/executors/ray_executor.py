"""The `ray` executor: the same plan, batches and run folder, on a pool of Ray actors.

Each actor holds a `BatchMaker` (checkpoints loaded once per actor, one resident
at a time) and turns a batch of jobs, grouped exactly as the local runner
groups them, into PNGs written atomically into the shared run folder. The
driver keeps every actor busy with one batch in flight plus one queued, marks
rows done in the ledger as results return (the driver alone writes it), and
when an actor dies re-sends only that actor's batches to a fresh actor.
Batches are ordered by checkpoint, so actors switch checkpoints rarely.

The run folder must be visible to every worker at the same path (a network
file system on a multi-node cluster).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from ..batching import MAX_BATCH
from ..core import Job
from ..ledger import Done
from ..plan import group_jobs
from ..worker import BatchMaker, Tuning, batch_size_for, batches

MAX_ATTEMPTS = 3


def _actor_class():
    import ray

    @ray.remote
    class GenerationWorker:
        def __init__(self, checkpoints, images_dir, device, memory, speedups, exact, batch_size):
            self.maker = BatchMaker(checkpoints, images_dir, device=device, memory=memory,
                                    tuning=Tuning(writers=0, speedups=tuple(speedups)), exact=exact,
                                    batch_size=batch_size)

        def make(self, jobs: list[dict]) -> list[Done]:
            return self.maker.make([Job.from_dict(d) for d in jobs])

        def pid(self) -> int:
            import os
            return os.getpid()

    return GenerationWorker


def work_units(pending: list[Job], worker_device: str, *, exact: bool, batch_size: int | None) -> list[list[Job]]:
    """The driver's batches. An automatic size on GPU workers is theirs to find (from their own free memory,
    with out-of-memory back-off): the driver, which may have no GPU, sends units of the largest batch and
    each actor splits them."""
    if worker_device == "cuda" and not exact and not isinstance(batch_size, int):
        return batches(group_jobs(pending).values(), lambda job: MAX_BATCH)
    return batches(group_jobs(pending).values(),
                   lambda job: batch_size_for(job, worker_device, exact=exact, batch_size=batch_size))


def generate_with_ray(exp, plan, ledger, pending: list[Job], result, *, exact: bool, device: str,
                      batch_size: int | None, log: Callable[[str], None], progress=None, address: str | None = None,
                      workers: int = 2, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                      on_batch_done: Callable | None = None) -> None:
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers * cpus_per_worker, 1), log_to_driver=False, include_dashboard=False)
    if device == "auto" and gpus_per_worker == 0:
        device = "cpu"
    size = 1 if exact else (batch_size or (exp.batch_size if exp.batch_size != "auto" else None))
    work = deque(work_units(pending, "cuda" if gpus_per_worker else "cpu", exact=exact, batch_size=size))
    Worker = _actor_class()
    spawn_args = (plan.checkpoints, str(ledger.images_dir), device, exp.memory, list(exp.speedups), exact, size)

    def spawn():
        return Worker.options(num_gpus=gpus_per_worker, num_cpus=cpus_per_worker).remote(*spawn_args)

    actors = [spawn() for _ in range(max(1, workers))]
    inflight: dict = {}  # ObjectRef -> (actor, batch, attempt)
    attempts: dict[int, int] = {}
    result.device = f"ray x{len(actors)} ({device})"
    t0 = time.perf_counter()

    def feed(actor) -> None:
        while work and sum(1 for a, _, _ in inflight.values() if a is actor) < 2:
            batch = work.popleft()
            ref = actor.make.remote([j.to_dict() for j in batch])
            inflight[ref] = (actor, batch, attempts.get(id(batch), 0))

    try:
        for actor in actors:
            feed(actor)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            actor, batch, attempt = inflight.pop(ref)
            try:
                rows = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ActorDiedError) as exc:
                if attempt + 1 >= MAX_ATTEMPTS:
                    raise RuntimeError(f"a batch of {len(batch)} jobs failed {MAX_ATTEMPTS} times: {exc}") from exc
                log(f"worker died ({type(exc).__name__}); retrying its batch of {len(batch)} jobs")
                attempts[id(batch)] = attempt + 1
                work.appendleft(batch)
                if actor in actors:
                    actors.remove(actor)
                    # the actor's other in-flight batches fail on their own and are re-queued the same way
                    replacement = spawn()
                    actors.append(replacement)
                    feed(replacement)
                continue
            ledger.mark_done_many(rows)
            result.generated += len(rows)
            result.unhealthy += sum(not (row.health or {}).get("ok", True) for row in rows)
            if on_batch_done is not None:
                on_batch_done(actors, result)
            if actor in actors:
                feed(actor)
            else:
                for a in actors:
                    feed(a)
    finally:
        for actor in actors:
            ray.kill(actor)
        result.seconds += time.perf_counter() - t0
