"""Data-parallel training: an arm and k - 1 Ray actors take equal parts of every global batch and average their
gradients (torch DDP: gloo on CPUs, NCCL on GPUs), so k workers take the steps one process takes.

How a training loop takes part (the built-ins' do; a plug-in generator may, see `Generator`):

    share = parallel.current()                 # rank and world of this call; world 1 outside a shared call
    model = parallel.wrap(model, device)       # DDP when world > 1
    for step ...:
        idx = order[pos : pos + batch]         # the global batch: the same on every worker (same seed)
        mine = share.part(len(idx))            # this worker's contiguous part of it
        noise = torch.randn(global_shape, generator=g)[mine]   # draws made for the whole batch, then cut
        loss = loss_fn(model(x[idx[mine]]), ...) * share.weight(len(idx))

Every worker draws the whole batch's randomness from the same seeded generator and keeps its
part, and each part's loss is weighted by its share of the batch, so the averaged gradient is
the global batch's: the steps are one process's steps up to floating-point reduction order (and
BatchNorm, whose statistics stay per worker as in plain DDP).

Which calls are shared: a function decorated `@shared` (`train_classifier`, a generator's fit
through `synthdata.fitting`) called in an arm that holds a `TrainingGroup` runs in all of its
workers at once: the arguments go to the actors once (callbacks stay in the arm, which alone
reports), and the arm's own result is returned. Anywhere else it is a plain call.

Why a group of actors in the arm's placement group rather than Ray Train's `TorchTrainer`: an arm
holds its CPUs (or GPU) through a generation, because it also samples and measures between its
trainings; a trainer's workers are a placement group of their own, so the arm's slot idles during
each fit and two arms waiting on their trainers can hold each other's CPUs. And a `TorchTrainer.fit`
of nothing takes 19-22 s on a 2-core host (Ray 2.60), against 1.2 s to start an actor once per
arm: a generation trains three models.
"""
from __future__ import annotations

import functools
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

GROUP_TIMEOUT = timedelta(minutes=10)  # a worker lost mid-step fails the others' next reduction after this long
STARTUP_TIMEOUT_S = 300  # the actors are in the arm's placement group, already reserved: they start in seconds


class WorkerLost(RuntimeError):
    """One of an arm's workers died mid-call (its process killed, its node lost): the call can be done again by a new
    group. A loop arm does the generation again, once (`loops.autophagy`)."""


@dataclass(frozen=True)
class Share:
    """This worker's place in a shared training call: `rank` of `world` workers."""

    rank: int = 0
    world: int = 1

    def part(self, n: int) -> slice:
        """This worker's contiguous part of a global batch of `n`: parts differ in size by at most one."""
        if n < self.world:
            raise ValueError(f"a batch of {n} cannot be shared by {self.world} workers (resources.workers_per_arm): "
                             "every worker needs at least one image of each batch; use a larger batch_size")
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def weight(self, n: int) -> float:
        """The factor on this part's mean loss that makes DDP's average of the workers' gradients the mean over the
        global batch of `n` (1 when the parts are equal, or in one process)."""
        if self.world == 1 or n == 0:
            return 1.0
        p = self.part(n)
        return self.world * (p.stop - p.start) / n


_share = Share()
_group: "TrainingGroup | None" = None


def current() -> Share:
    """The rank and world of the running call: world 1 outside a shared call."""
    return _share


@contextmanager
def sharing(share: Share) -> Iterator[Share]:
    """Run the block as `share`'s part of a shared call (training loops read it through `current()`)."""
    global _share
    before, _share = _share, share
    try:
        yield share
    finally:
        _share = before


def wrap(model: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """`model` in DDP when this call is shared (its gradients averaged over the workers at each backward), else itself."""
    if _share.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[0] if device.startswith("cuda") else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (what is saved and returned), or `model` itself."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def mean(value: float) -> float:
    """`value` averaged over the workers of a shared call (a loss each worker measured on its parts); itself alone."""
    if _share.world == 1:
        return float(value)
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / _share.world


def shared(fn: F) -> F:
    """Run `fn` in every worker of the arm's `TrainingGroup` at once (a plain call when there is none, or inside one)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if _group is None or _share.world > 1:
            return fn(*args, **kwargs)
        return _group.run(call, *args, **kwargs)  # `call` itself goes to the actors: a module's name, pickled by reference

    return call  # type: ignore[return-value]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, address: str, device: str) -> None:
    import torch.distributed as dist

    if dist.is_initialized():  # a Ray worker process reused from an earlier arm that did not get to leave
        dist.destroy_process_group()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world, timeout=GROUP_TIMEOUT)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class TrainingWorker:
    """A Ray actor: one rank of an arm's training group (`TrainingGroup`), `threads` torch threads."""

    def __init__(self, threads: int = 1) -> None:
        torch.set_num_threads(max(1, int(threads)))

    def join(self, rank: int, world: int, address: str, device: str, precision: str = "auto") -> None:
        from synthdata.compute import set_precision

        set_precision(precision)  # the arm's: every worker computes in the same precision
        _join(rank, world, address, device)

    def run(self, rank: int, world: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        with sharing(Share(rank, world)):
            fn(*args, **kwargs)  # the arm's result is the one returned: every rank holds the same weights

    def leave(self) -> None:
        _leave()


class TrainingGroup:
    """The arm (rank 0) and `workers - 1` Ray actors (`cpus_per_worker` CPUs and threads, `gpus_per_worker` GPUs each)
    in one process group.

    Started once per arm; while it is `active()`, every `@shared` call made in the arm runs in
    all of them. Actors started from an arm land in its placement group (its child tasks are
    captured), so they are reserved with it.
    """

    def __init__(self, workers: int, *, cpus_per_worker: float = 1, gpus_per_worker: float = 0, device: str = "cpu",
                 actor_class: type = TrainingWorker, actor_args: tuple = ()) -> None:
        """`actor_class`: `TrainingWorker` or a class built on it (one that also samples), made with `actor_args`."""
        import ray

        self.world, self.device = workers, device
        actor = ray.remote(actor_class).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        self.actors = [actor.remote(*actor_args) for _ in range(workers - 1)]
        try:  # started (placed, constructed) before the rendezvous, which would wait for a dead one for GROUP_TIMEOUT
            ray.get([a.__ray_ready__.remote() for a in self.actors], timeout=STARTUP_TIMEOUT_S)
        except BaseException as err:
            self.close()
            if isinstance(err, ray.exceptions.GetTimeoutError):
                raise RuntimeError(f"the arm's {workers - 1} training workers did not start within "
                                   f"{STARTUP_TIMEOUT_S} s") from None
            raise
        address = f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"
        from synthdata.compute import precision_mode

        joined = [a.join.remote(r, workers, address, device, precision_mode()) for r, a in enumerate(self.actors, start=1)]
        _join(0, workers, address, device)  # returns once every rank has joined
        ray.get(joined)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` in every worker at once; the arm's result. Callables among the keywords (progress,
        per-epoch callbacks) are the arm's: the actors get None."""
        import ray

        theirs = {k: (None if callable(v) else v) for k, v in kwargs.items()}
        args_ref, kwargs_ref = ray.put(args), ray.put(theirs)  # once, read by every actor
        refs = [a.run.remote(r, self.world, fn, args_ref, kwargs_ref) for r, a in enumerate(self.actors, start=1)]
        try:
            with sharing(Share(0, self.world)):
                result = fn(*args, **kwargs)
        except BaseException as err:
            lost = self._lost(refs) if isinstance(err, Exception) else None  # a reduction fails when a peer dies
            self.close()  # the others may wait in a reduction the arm will never join
            if lost:
                raise WorkerLost(lost) from err
            raise
        lost = self._lost(refs, wait_s=None)
        if lost:  # died after its last reduction: the group does not stand
            self.close()
            raise WorkerLost(lost)
        ray.get(refs)  # an actor's own error
        return result

    def _lost(self, refs: list, wait_s: float | None = 10.0) -> str | None:
        """Why an actor of this call died ('' / None when none did); `wait_s`: how long to wait for their answers."""
        import ray

        done, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                return f"a training worker of the arm died ({type(err).__name__})"
            except Exception:
                pass  # its own error, not a death
        return None

    @contextmanager
    def active(self) -> Iterator["TrainingGroup"]:
        """Make `@shared` calls in this process run in this group (for the block)."""
        global _group
        before, _group = _group, self
        try:
            yield self
        finally:
            _group = before

    def close(self) -> None:
        import ray

        _leave()
        for a in self.actors:
            ray.kill(a)
        self.actors = []


@contextmanager
def training_group(workers: int, *, cpus_per_worker: float = 1, gpus_per_worker: float = 0, device: str = "cpu"
                   ) -> Iterator[TrainingGroup | None]:
    """For the block, `@shared` calls train in `workers` workers (this process and workers - 1 actors); 1: alone."""
    if workers == 1:
        yield None
        return
    group = TrainingGroup(workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, device=device,
                          actor_args=(int(cpus_per_worker),))
    try:
        with group.active():
            yield group
    finally:
        group.close()
