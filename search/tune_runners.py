"""Where ``ctr tune`` runs its trials: one after another in this process, or in parallel as Ray tasks.

Both take :class:`~search.tune_trial.TrialJob` s with ``submit`` and hand back finished ones with ``wait``: the
job's handle and its outcome, the trial's final state (``"COMPLETE"``, ``"PRUNED"``, ``"FAIL"``), the exception
it raised, or :class:`TrialLost` when its process or node died (the tuner fails the trial and asks its
parameters again). Ray tasks take one CPU each and are never retried by Ray: a retry is a new trial.

Example:
    >>> with make_runner(workers=2, address=None) as runner:  # doctest: +SKIP
    ...     handle = runner.submit(job)
    ...     runner.wait([handle])
    (ObjectRef(...), 'COMPLETE')
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from search.ray_session import ray_session
from search.tune_trial import TrialJob, run_trial

__all__ = ["LocalRunner", "RayRunner", "Runner", "TrialLost", "make_runner"]

Outcome = str | BaseException


class TrialLost(Exception):
    """The process (or node) running a trial died before the trial finished."""


class Runner(Protocol):
    def submit(self, job: TrialJob) -> Any: ...

    def wait(self, handles: Sequence[Any]) -> tuple[Any, Outcome]: ...


class LocalRunner:
    """Runs each job in this process when it is waited for (``--workers 0``)."""

    def __init__(self) -> None:
        self._jobs: dict[int, TrialJob] = {}
        self._next = 0

    def submit(self, job: TrialJob) -> int:
        self._next += 1
        self._jobs[self._next] = job
        return self._next

    def wait(self, handles: Sequence[Any]) -> tuple[Any, Outcome]:
        handle = handles[0]
        job = self._jobs.pop(handle)
        try:
            return handle, run_trial(job)
        except Exception as e:  # the tuner fails the trial, then raises it
            return handle, e


# Set by a launcher (a Kubeflow pod, an earlier Lightning fit in the driver) and inherited by Ray's workers: a trial
# is one process, and with these its Lightning fit would rendezvous on a port another process holds.
_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")


def _ray_trial(job: TrialJob) -> str:
    """A Ray task: one trial, as a single process of its own."""
    for name in _DIST_VARS:
        os.environ.pop(name, None)
    return run_trial(job)


class RayRunner:
    """Runs each job as a Ray task of one CPU on the session's Ray (local, or the cluster at ``--address``)."""

    def __init__(self) -> None:
        import ray

        self._task = ray.remote(num_cpus=1, max_retries=0)(_ray_trial)

    def submit(self, job: TrialJob) -> Any:
        return self._task.remote(job)

    def wait(self, handles: Sequence[Any]) -> tuple[Any, Outcome]:
        import ray
        from ray.exceptions import RayError, RayTaskError

        ready, _ = ray.wait(list(handles), num_returns=1)
        ref = ready[0]
        try:
            return ref, str(ray.get(ref))
        except RayTaskError as e:  # the trial raised: the same exception as in this process
            cause = e.as_instanceof_cause()  # type: ignore[no-untyped-call]
            return ref, cause if isinstance(cause, BaseException) else e
        except RayError as e:  # its worker or node died
            return ref, TrialLost(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e}")

    def cancel(self, handles: Sequence[Any]) -> None:
        import ray

        for ref in handles:
            ray.cancel(ref, force=True)


@contextlib.contextmanager
def make_runner(workers: int, address: str | None) -> Iterator[LocalRunner | RayRunner]:
    """No workers: run trials here; else Ray tasks (a local Ray of at least ``workers`` CPUs, or ``address``)."""
    if workers == 0:
        yield LocalRunner()
        return
    with ray_session(address, num_cpus=workers):
        yield RayRunner()
