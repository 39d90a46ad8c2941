"""A sample set drawn by several Ray workers at once, the same set image for image as one process draws.

Every image has its own seed (`synthdata.seeds.image_seeds`), so the set can be cut anywhere:
it is cut into work items of one shard each (`synthdata.shards.images_per_shard`), and a pool
of `workers` Ray actors (each holding the fitted generator, one GPU each where a study asks for
GPUs) draws the items in whatever order they come. Identity lives in the items' first indices
and in the shard file names, never in the order results arrive. A set too large to hold is
written by the workers as shards side by side under its storage folder and merged into one
manifest (the very shards one writer would have written: same digests, same fingerprint);
a smaller one comes back as uint8 codes and is assembled in memory.

A pool of actors (`ray.util.ActorPool`) rather than Ray Data: the work is a list of index
ranges, each drawn once by a stateful worker, and Ray Data's row order, which it does not
keep by default, is not needed when every item names its own range.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import numpy as np
import torch

from synthdata.data import ImageSet, class_balanced_labels, spills
from synthdata.parallel import TrainingWorker, WorkerLost
from synthdata.seeds import SEED_GROUP, image_seeds
from synthdata.shards import join
from synthdata.spec import GeneratorSpec, ResourcesSpec


class SamplingWorker:
    """A Ray actor holding one generator: `load` a fitted state, then `draw` index ranges of a sample set."""

    def __init__(self, spec: GeneratorSpec, shape: tuple[int, int, int], num_classes: int, threads: int = 1,
                 device: str = "cpu") -> None:
        from synthdata.generators import create_generator

        torch.set_num_threads(max(1, int(threads)))
        self.shape = tuple(shape)
        self.generator = create_generator(spec, shape, num_classes, device)

    def load(self, state: dict[str, torch.Tensor], precision: str = "auto") -> None:
        from synthdata.compute import set_precision

        set_precision(precision)  # the arm's: on a GPU, bf16 or fp32 images must be the ones the arm would draw
        self.generator.load_state_dict(state)

    def draw(self, labels: torch.Tensor, seeds: torch.Tensor, start: int, levels: int | None, num_classes: int,
             root: str | None, context: str) -> tuple[int, Any]:
        """Images start .. start+len(labels)-1: a part's manifest when written under `root`, else their codes."""
        return _draw_item(self.generator, labels, seeds, start, self.shape, levels, num_classes, root, context)


class ArmWorker(SamplingWorker, TrainingWorker):
    """A Ray actor that both trains (one rank of the arm's `TrainingGroup`) and samples (a `SamplingPool`'s worker):
    an arm with `workers_per_arm` and `sampling_workers` holds max(both) - 1 of them, not their sum."""


def _draw_item(generator: Any, labels: torch.Tensor, seeds: torch.Tensor, start: int, shape: tuple[int, int, int],
               levels: int | None, num_classes: int, root: str | None, context: str) -> tuple[int, Any]:
    """One work item, images start .. start+len(labels)-1: a part's manifest when written under `root`, else codes."""
    from synthdata.generators import sample_images
    from synthdata.shards import ShardWriter, to_codes

    images = torch.cat(list(sample_images(generator, labels, seeds, shape, levels, context)))
    if root is None:
        return start, to_codes(images, levels)
    writer = ShardWriter(root, shape, levels, num_classes, start=start, per_shard=len(labels))
    writer.add(images, labels)
    return start, writer.close()


class SamplingPool:
    """Ray actors for one generator (of `spec`, for images of `shape`): started once (an arm's), then `draw` a fitted
    generator's sample sets as often as needed (every generation), `close` at the end.

    With `local=True` the calling process is one of the `workers` (it draws items between
    collecting the actors' results): an arm with `resources.sampling_workers: k` holds its own
    CPUs and k - 1 workers', never idles while they sample, and k = 1 is the plain in-process
    draw.
    """

    def __init__(self, spec: GeneratorSpec, shape: tuple[int, int, int], num_classes: int, workers: int, *,
                 cpus_per_worker: float = 1, gpus_per_worker: float = 0, local: bool = False,
                 actors: list | None = None) -> None:
        """`actors`: running `SamplingWorker`s to draw with first (an arm's `ArmWorker`s, left running by `close`);
        the pool starts the rest of its `workers`."""
        import ray

        self.local = local
        actor = ray.remote(SamplingWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        device = "cuda" if gpus_per_worker > 0 else "cpu"
        count = max(0 if local else 1, workers - (1 if local else 0))
        self.borrowed = list(actors or [])[:count]
        self.actors = self.borrowed + [actor.remote(spec, shape, num_classes, max(1, int(cpus_per_worker)), device)
                                       for _ in range(count - len(self.borrowed))]

    def draw(self, generator: Any, n: int, real: ImageSet, *, label_seed: int, sample_seed: int,
             storage: str | None = None, in_memory_mb: float | None = None, item_size: int | None = None,
             context: str = "generator diverged", show: Any = None) -> ImageSet:
        """`draw_samples` of the fitted `generator` (its `state_dict()` goes to the actors): the same images and labels.

        `item_size` images per work item (default: a sixteenth of the set, at least SEED_GROUP
        and at most a shard's worth: the same items for any number of workers, so the same
        shards and fingerprint). A set larger than `in_memory_mb` as float32 goes to `storage`
        as shards; the workers write them.
        """
        import ray

        from synthdata.imagestore import codes_to_float
        from synthdata.shards import images_per_shard, merge_parts, open_shards

        shape, levels, k = real.shape, real.levels, real.num_classes
        labels = class_balanced_labels(n, real.labels, k, torch.Generator().manual_seed(label_seed))
        seeds = image_seeds(sample_seed, 0, n)
        large = spills(n, shape, storage, in_memory_mb)
        step = item_size or min(images_per_shard(shape, levels), max(SEED_GROUP, -(-n // 16)))
        todo = [(i, min(i + step, n)) for i in range(0, n, step)]
        if self.actors:
            state_ref = ray.put({key: v.detach().cpu() for key, v in generator.state_dict().items()})  # once, read by all
            from synthdata.compute import precision_mode

            ray.get([a.load.remote(state_ref, precision_mode()) for a in self.actors])

        def root(a: int) -> str | None:
            return join(storage, f"part_{a:09d}") if large else None

        parts: dict[int, Any] = {}
        running: dict[Any, Any] = {}
        idle = list(self.actors)
        while todo or running:
            while idle and todo:  # every idle actor gets the next item
                a, b = todo.pop(0)
                actor = idle.pop()
                running[actor.draw.remote(labels[a:b], seeds[a:b], a, levels, k, root(a), context)] = actor
            if self.local and todo:  # then this process draws one, and collects whatever finished meanwhile
                a, b = todo.pop(0)
                start, part = _draw_item(generator, labels[a:b], seeds[a:b], a, shape, levels, k, root(a), context)
                parts[start] = part
                finished = ray.wait(list(running), num_returns=len(running), timeout=0)[0] if running else []
            else:
                finished = ray.wait(list(running), num_returns=1)[0]
            for ref in finished:
                try:
                    start, part = ray.get(ref)
                except ray.exceptions.RayActorError as err:  # a worker died: the set can be drawn again, by a new pool
                    raise WorkerLost(f"a sampling worker died ({type(err).__name__})") from err
                parts[start] = part
                idle.append(running.pop(ref))
            if show is not None:
                show(len(parts) / -(-n // step))
        if large:
            merge_parts(storage, list(parts.values()), labels)
            images, stored_labels, _ = open_shards(storage)
            return ImageSet(images, stored_labels, k, levels)
        if not parts:
            return ImageSet(torch.zeros((0, *shape)), labels, k, levels)
        codes = np.concatenate([parts[start] for start in sorted(parts)])  # in index order, however they arrived
        return ImageSet(codes_to_float(codes, levels), labels, k, levels)

    def close(self) -> None:
        import ray

        for a in self.actors:
            if not any(a is b for b in self.borrowed):
                ray.kill(a)
        self.actors = []


def arm_training_group(spec: GeneratorSpec, real: ImageSet, resources: ResourcesSpec, device: str = "cpu") -> Any:
    """An arm's `TrainingGroup` of `ArmWorker`s (they also sample a generator of `spec`) when
    `resources.workers_per_arm` > 1, else None. Its actors are as wide as the arm (`worker_cpus`)."""
    from synthdata.parallel import TrainingGroup

    if resources.workers_per_arm == 1:
        return None
    return TrainingGroup(resources.workers_per_arm, cpus_per_worker=resources.worker_cpus,
                         gpus_per_worker=resources.gpus_per_arm, device=device, actor_class=ArmWorker,
                         actor_args=(spec, real.shape, real.num_classes, int(resources.worker_cpus), device))


@contextmanager
def arm_workers(spec: GeneratorSpec, real: ImageSet, resources: ResourcesSpec, device: str = "cpu"
                ) -> Iterator[SamplingPool | None]:
    """The workers of a task that trains a generator of `spec` on `real` and samples it (a mix pool, a detect source),
    for the block: with `resources.workers_per_arm` > 1 its fits train on all of them (a training group, active), and
    with either key above 1 the pool returned draws its samples on them (`resources.workers` in all). None: alone.

    Started from inside the task, the actors land in its placement group (`loops.ray_tools.arm_placement`)."""
    if resources.workers == 1:
        yield None
        return
    group = arm_training_group(spec, real, resources, device)
    pool = SamplingPool(spec, real.shape, real.num_classes, resources.workers, cpus_per_worker=resources.worker_cpus,
                        gpus_per_worker=resources.gpus_per_arm, local=True, actors=group.actors if group else None)
    try:
        with group.active() if group is not None else nullcontext():
            yield pool
    finally:
        pool.close()
        if group is not None:
            group.close()


def draw_sharded(spec: GeneratorSpec, generator: Any, n: int, real: ImageSet, *, workers: int, local: bool = False,
                 cpus_per_worker: float = 1, gpus_per_worker: float = 0, **draw: Any) -> ImageSet:
    """One sample set of a fitted generator (built from `spec`) by a pool of `workers` started for it
    (`SamplingPool.draw`'s keywords; `local`: this process is one of them)."""
    pool = SamplingPool(spec, real.shape, real.num_classes, workers, cpus_per_worker=cpus_per_worker,
                        gpus_per_worker=gpus_per_worker, local=local)
    try:
        return pool.draw(generator, n, real, **draw)
    finally:
        pool.close()
