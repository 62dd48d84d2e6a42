"""The `ray` executor: the same plan, batches and run folder, on a pool of Ray actors.

Each actor holds a `BatchMaker` (checkpoints loaded once per actor, one resident
at a time) and turns a batch of jobs, grouped exactly as the local runner
groups them, into PNGs written atomically into the shared run folder. The
driver keeps every actor busy with one batch in flight plus one queued, marks
rows done in the ledger as results return (the driver alone writes it), and
when an actor dies re-sends only that actor's batches to a fresh actor.
Batches are ordered by checkpoint, so actors switch checkpoints rarely.

A worker that cannot set itself up (its device, dtype or memory settings, or
any other error while building its `BatchMaker`) or a batch that raises fails
the run at once with that error, as in a local run: such errors repeat on
every attempt, so they are not retried. Batches that finished before it are
recorded first, so a resumed run does not make them again.

The run folder must be visible to every worker at the same path (a network
file system on a multi-node cluster); workers are given its absolute path, as a
relative --out would name a folder under each worker's own working folder.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from typing import Callable, Iterable, Sequence

from ..batching import MAX_BATCH
from ..core import Job, SettingsError
from ..ledger import Done
from ..plan import group_jobs
from ..worker import BatchMaker, Tuning, batch_size_for, batches

MAX_ATTEMPTS = 3


class WorkerSetupError(SettingsError):
    """A Ray worker could not set itself up (raised by its first batch; the message is one line)."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(exc, SettingsError) else f"{type(exc).__name__}: {first}".rstrip(": ")


def check_worker_settings(device: str, dtypes: Iterable[str], memory: str | Sequence[str], *,
                          gpus_per_worker: float = 0.0) -> str:
    """What the driver can check of the workers' device, dtype and memory settings before any run folder is
    touched (a worker may have devices this machine lacks, so whether the device exists is the worker's to
    find): the device string's syntax, a GPU for a CUDA device, and the dtypes and memory policy on the kind
    of device the workers will use. Returns that kind ("cpu", "cuda" or "mps")."""
    from ..devices import memory_options, pick_dtype

    req = (device or "auto").strip().lower()
    kind, _, index = req.partition(":")
    if not (req == "auto" or (kind in ("cpu", "mps") and not index)
            or (kind == "cuda" and (not index or index.isdigit()))):
        raise SettingsError(f"device={device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if kind == "cuda":
        if not gpus_per_worker:
            raise SettingsError(f"device={device!r} needs GPUs on the Ray workers: pass --gpus-per-worker G "
                                "(e.g. 1, or 0.5 to share a GPU between two workers), or use device 'cpu'")
        visible = max(1, math.ceil(gpus_per_worker))
        if index and int(index) >= visible:
            raise SettingsError(f"device={device!r}: a Ray worker with --gpus-per-worker {gpus_per_worker:g} "
                                f"sees its GPU(s) as cuda:0..cuda:{visible - 1}; use device 'cuda'")
    worker_kind = {"auto": "cuda" if gpus_per_worker else "cpu"}.get(req, kind)
    for dtype in sorted(set(dtypes)):
        pick_dtype(dtype, worker_kind)
    memory_options(memory, worker_kind)
    return worker_kind


def _actor_class():
    import ray

    @ray.remote
    class GenerationWorker:
        def __init__(self, checkpoints, images_dir, device, dtypes, memory, speedups, exact, batch_size):
            # A setup error would repeat in every fresh actor: kept, and raised by `make` as a WorkerSetupError
            # (not an actor death, which the driver retries).
            self.maker, self.failed = None, None
            try:
                from ..devices import check_settings

                check_settings(device, dtypes, memory)
                self.maker = BatchMaker(checkpoints, images_dir, device=device, memory=memory,
                                        tuning=Tuning(writers=0, speedups=tuple(speedups)), exact=exact,
                                        batch_size=batch_size)
            except Exception as exc:  # noqa: BLE001 - reported by the first batch
                import socket
                self.failed = f"a Ray worker on {socket.gethostname()} could not set up: {_one_line(exc)}"

        def make(self, jobs: list[dict]) -> list[Done]:
            if self.failed is not None:
                raise WorkerSetupError(self.failed)
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


def worker_args(exp, plan, ledger, pending: list[Job], *, device: str, exact: bool, batch_size) -> tuple:
    """What each actor is built with (`GenerationWorker.__init__`). The images folder is absolute: a worker
    on another node starts in its own working folder, where a relative --out names another folder (or none)."""
    return (plan.checkpoints, str(ledger.images_dir.resolve()), device, sorted({j.dtype for j in pending}),
            exp.memory, list(exp.speedups), exact, batch_size)


def _task_error(exc: BaseException) -> BaseException:
    """The error a batch raised on its worker (a RayTaskError carries it as `cause`), so that a user error
    (a setting, out of memory, a missing file) reads as one line, as in a local run."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def generate_with_ray(exp, plan, ledger, pending: list[Job], result, *, exact: bool, device: str,
                      batch_size: int | None, log: Callable[[str], None], progress=None, address: str | None = None,
                      workers: int = 2, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                      on_batch_done: Callable | None = None) -> None:
    import ray

    from ..run import _Progress

    local = not ray.is_initialized() and not address
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers * cpus_per_worker, 1), log_to_driver=False, include_dashboard=False)
    gpus, need = ray.cluster_resources().get("GPU", 0), max(1, workers) * gpus_per_worker
    if gpus < need:  # a worker that can never be placed would wait (and hold the run) forever
        have = f"the Ray cluster has {gpus:g} GPU(s); --workers {workers} x --gpus-per-worker {gpus_per_worker:g} " \
               f"need {need:g}"
        if local:
            raise SettingsError(f"{have} (the local Ray instance this run started has this machine's GPUs); "
                                "lower --workers or --gpus-per-worker, pass --address of a cluster with GPUs, "
                                "or drop --gpus-per-worker and use --device cpu")
        log(f"note: {have}; the workers that do not fit wait until the cluster has room")
    if device == "auto" and gpus_per_worker == 0:
        device = "cpu"
    size = 1 if exact else (batch_size or (exp.batch_size if exp.batch_size != "auto" else None))
    work = deque(work_units(pending, "cuda" if gpus_per_worker else "cpu", exact=exact, batch_size=size))
    Worker = _actor_class()
    spawn_args = worker_args(exp, plan, ledger, pending, device=device, exact=exact, batch_size=size)

    def spawn():
        return Worker.options(num_gpus=gpus_per_worker, num_cpus=cpus_per_worker).remote(*spawn_args)

    actors = [spawn() for _ in range(max(1, workers))]
    inflight: dict = {}  # ObjectRef -> (actor, batch, attempt)
    attempts: dict[int, int] = {}
    result.device = f"ray x{len(actors)} ({device})"
    bar = _Progress(len(pending), enabled=progress, log=log)
    t0 = time.perf_counter()

    def feed(actor) -> None:
        while work and sum(1 for a, _, _ in inflight.values() if a is actor) < 2:
            batch = work.popleft()
            ref = actor.make.remote([j.to_dict() for j in batch])
            inflight[ref] = (actor, batch, attempts.get(id(batch), 0))

    def record(rows: list[Done]) -> None:
        ledger.mark_done_many(rows)
        result.generated += len(rows)
        result.unhealthy += sum(not (row.health or {}).get("ok", True) for row in rows)
        bar.advance(len(rows))
        if on_batch_done is not None:
            on_batch_done(actors, result)

    def settle(block: bool) -> None:
        """After an error: record the batches in flight that finished (with `block`, once every one has
        finished or failed), so that resuming does not make them again; nothing new is sent."""
        work.clear()
        refs = list(inflight)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=None if block else 0) if refs else ([], [])
        for ref in ready:
            inflight.pop(ref)
            try:
                rows = ray.get(ref)
            except Exception:  # noqa: BLE001 - that batch stays pending
                continue
            record(rows)

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
                    actors.append(spawn())
                for a in actors:  # the replacement may have finished its work already: any actor takes it
                    feed(a)
                continue
            except ray.exceptions.RayTaskError as exc:  # the batch raised: it would again, so the run stops
                raise _task_error(exc) from exc
            record(rows)
            if actor in actors:
                feed(actor)
            else:
                for a in actors:
                    feed(a)
    except Exception:
        with contextlib.suppress(Exception):
            settle(block=True)
        raise
    except BaseException:  # Ctrl-C: only what has already finished
        with contextlib.suppress(Exception):
            settle(block=False)
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
        result.seconds += time.perf_counter() - t0
        bar.close()
