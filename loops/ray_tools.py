"""What every runner needs from Ray: starting or joining it, waiting on arm tasks, and a worker's error in one line."""
from __future__ import annotations

import ast
import contextlib
import os
import re
import sys
from typing import Any, Callable, Iterator

from loops.stopping import StudyStopped, check_stopped, request_stop
from synthdata.errors import UserError
from synthdata.spec import ResourcesSpec


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to a running cluster (address or $RAY_ADDRESS), else start a local Ray; True when a local Ray was started here."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, log_to_driver=True, configure_logging=True, logging_level="ERROR")
    # "local" always starts a new Ray here; without it, ray.init() would join whatever
    # cluster `ray start` last left running on this machine.
    ray.init(address=address or "local", num_cpus=None if address else num_cpus, **kwargs)
    return not address


def local_cpus() -> int:
    """The CPUs a local Ray started here would have: Ray's own count (cgroup quotas included), else os.cpu_count()."""
    try:
        from ray._private.utils import get_num_cpus  # Ray-internal; the fallback below is a machine's plain count

        return int(get_num_cpus())
    except Exception:
        return os.cpu_count() or 1


def refuse_before_start(resources: ResourcesSpec, address: str | None) -> None:
    """An arm wider than this machine, on a local Ray not started yet: refused now (exit 2), not after a Ray start."""
    import ray

    if ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"):
        return
    most = local_cpus()
    if resources.cpus_per_arm > most:
        raise _too_wide("cpus_per_arm", resources.cpus_per_arm, most, "CPUs")
    _check_sampling_workers(resources, most)


def arm_cpus(resources: ResourcesSpec) -> float:
    """The CPUs one arm holds: its own and its workers'."""
    return resources.cpus_per_arm + (resources.workers - 1) * resources.worker_cpus


def arm_placement(resources: ResourcesSpec, cpus: float | None = None, workers: int | None = None) -> tuple[dict, Any]:
    """Task options that reserve an arm (`cpus`, default cpus_per_arm) with its workers, together or not at all
    (one placement group, its child tasks captured: the arm's actors land in it), and the group: ({}, None) for an
    arm without workers. `workers`: default `resources.workers` (an arm that trains and samples); an arm that only
    trains (a detect arm) holds `workers_per_arm`. Remove the group (`release`) when the arm's task is done."""
    workers = resources.workers if workers is None else workers
    if workers == 1:
        return {}, None
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    gpu = {"GPU": resources.gpus_per_arm} if resources.gpus_per_arm else {}
    each = resources.worker_cpus
    bundles = [{"CPU": cpus or resources.cpus_per_arm, **gpu}] + [{"CPU": each, **gpu} for _ in range(workers - 1)]
    group = placement_group(bundles, strategy="PACK")
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
    return {"scheduling_strategy": strategy}, group


def trial_resources(resources: ResourcesSpec) -> Any:
    """A Tune trial's resources: an arm's CPUs and GPUs, and with `workers_per_arm` > 1 the bundles of its training
    actors (Tune reserves them with the trial, its child actors placed in them)."""
    if resources.workers_per_arm == 1:  # a trial only trains: its sampling workers would idle
        return {"cpu": resources.cpus_per_arm, "gpu": resources.gpus_per_arm}
    from ray.tune import PlacementGroupFactory

    gpu = {"GPU": resources.gpus_per_arm} if resources.gpus_per_arm else {}
    return PlacementGroupFactory([{"CPU": resources.cpus_per_arm, **gpu}]
                                 + [{"CPU": resources.worker_cpus, **gpu} for _ in range(resources.workers_per_arm - 1)])


def release(group: Any) -> None:
    """Hand an arm's placement group back (None: nothing to do)."""
    if group is not None:
        from ray.util import remove_placement_group

        remove_placement_group(group)


def _check_sampling_workers(resources: ResourcesSpec, most: float) -> None:
    """An arm and its workers (one placement group) wider than a node: refused, naming the wider of the two keys."""
    field = "workers_per_arm" if resources.workers_per_arm >= resources.sampling_workers else "sampling_workers"
    workers = resources.workers
    each = resources.worker_cpus
    if workers > 1 and arm_cpus(resources) > most:
        raise UserError(f"resources.{field}: {workers} workers per arm hold "
                        f"{arm_cpus(resources):g} CPUs with cpus_per_arm {resources.cpus_per_arm:g} (the arm and "
                        f"{workers - 1} of {each:g} CPU), but this machine's Ray has {most:g}; set at most "
                        f"{max(1, int((most - resources.cpus_per_arm) // each + 1))}")


def _too_wide(field: str, asked: float, most: float, what: str) -> UserError:
    hint = f"at most {most:g}" if most else "0 (none is visible)"
    return UserError(f"resources.{field}: {asked:g} {what} per arm, but this machine's Ray has {most:g}; set {hint}")


def most_on_one_node(resource: str) -> float:
    """The most of `resource` (CPU, GPU) one live node has: a task asking for more is never scheduled there."""
    import ray

    return max((n["Resources"].get(resource, 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)


def widest_node_cpus() -> float:
    """The most CPUs one live node has (at least 1)."""
    return most_on_one_node("CPU") or 1.0


def check_resources(resources: ResourcesSpec, local: bool) -> None:
    """Refuse an arm no node can ever hold, on a Ray this command started itself (UserError, exit 2).

    On a cluster the autoscaler may still add a node that fits: the study then waits, and
    says so once, instead of looping on Ray's "no available node types" line in silence.
    """
    for key, field, what in (("CPU", "cpus_per_arm", "CPUs"), ("GPU", "gpus_per_arm", "GPUs")):
        asked = getattr(resources, field)
        most = most_on_one_node(key)
        if asked <= most:
            continue
        if local:
            raise _too_wide(field, asked, most, what)
        print(f"waiting: no node of the cluster has {asked:g} {what} for an arm yet (resources.{field}); "
              "the autoscaler may add one", file=sys.stderr, flush=True)
    if local:  # a local Ray is one node: an arm's placement group must fit on it whole
        _check_sampling_workers(resources, most_on_one_node("CPU"))
        gpus, most = resources.gpus_per_arm * resources.workers, most_on_one_node("GPU")
        if resources.workers > 1 and gpus > most:
            field = "workers_per_arm" if resources.workers_per_arm >= resources.sampling_workers else "sampling_workers"
            raise UserError(f"resources.{field}: {resources.workers} workers per arm hold {gpus:g} GPUs with "
                            f"gpus_per_arm {resources.gpus_per_arm:g}, but this machine's Ray has {most:g}; set at most "
                            f"{max(1, int(most // resources.gpus_per_arm))}")


class InfeasibleWatch:
    """Listens to the cluster's autoscaler (its lines reach the driver's log stream) for an arm's request
    reported infeasible for every node type; then stops the driver, which fails the study with the reason.
    """

    PHRASE = "No available node types can fulfill resource request"

    def __init__(self, resources: ResourcesSpec) -> None:
        self.request = {"CPU": float(resources.cpus_per_arm), **({"GPU": float(resources.gpus_per_arm)} if resources.gpus_per_arm else {})}
        self.message: str | None = None

    def __call__(self, data: dict) -> None:
        if str(data.get("pid")) != "autoscaler" or self.message is not None:
            return
        for line in data.get("lines") or []:
            found = re.search(r"(\{[^{}]*\})", line) if self.PHRASE in line else None
            if found and _literal(found.group(1)) == self.request:
                self.message = line.split(":event_summary:")[-1].strip().removeprefix("Error: ")
                # The driver waits in ray.wait/ray.get, which see it as Ctrl-C; recorded too, since that raise can be
                # lost in Ray's C code, and the waiting loops' check_stopped then raises it within a second.
                request_stop(StudyStopped(f"infeasible: {self.message}", 2))
                return


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


@contextlib.contextmanager
def watch_infeasible(resources: ResourcesSpec, enabled: bool) -> Iterator[InfeasibleWatch]:
    """An InfeasibleWatch on Ray's driver log stream for the block (a Ray-internal hook: without it, nothing is watched)."""
    watch = InfeasibleWatch(resources)
    dispatcher = None
    if enabled:
        try:
            from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

            dispatcher.add_handler("synthdata_infeasible", watch)
        except (ImportError, AttributeError):
            dispatcher = None
    try:
        yield watch
    finally:
        if dispatcher is not None:
            dispatcher.remove_handler("synthdata_infeasible")


def short_reason(err: Exception) -> str:
    """The last line of a worker's error: the exception type and message, not the Ray traceback."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def wait_arms(refs: dict, tracker, on_result: Callable[[Any, Any], str], *, desc: str, show_progress: bool,
              on_done: Callable[[Any], None] | None = None) -> dict[str, str]:
    """Wait for arm tasks (`refs`: task ref -> an arm with a `name` and an open run), in the order they finish.

    An arm whose task raised is ended FAILED with the reason; otherwise `on_result(arm,
    value)` logs it and returns a progress line, and its run is ended FINISHED. Progress
    is a bar on a terminal, one line per arm in a log. Returns the failures by arm name.
    """
    import ray
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(total=len(refs), desc=desc, unit="arm", disable=not (show_progress and tty), file=sys.stderr)
    failed: dict[str, str] = {}
    done = 0
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            check_stopped()
            if not ready:
                continue
            arm = refs[ready[0]]
            if on_done is not None:  # finished or failed: what it held can go (its placement group)
                on_done(ready[0])
            try:
                value = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                failed[arm.name] = short_reason(err)
                tracker.end_arm(arm.name, "FAILED", failed[arm.name])
                continue
            line = on_result(arm, value)
            tracker.end_arm(arm.name, "FINISHED")
            done += 1
            bar.set_postfix_str(line)
            bar.update()
            if show_progress and not tty:
                print(f"[{done}/{len(refs)}] {line}", file=sys.stderr, flush=True)
    finally:
        bar.close()
    return failed

