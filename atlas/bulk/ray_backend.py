"""Ray backend: the same worker function as Ray tasks, on this machine or a cluster.

One task per GPU (``num_gpus=1``) when the cluster has GPUs, else CPU tasks sharing the cores;
shards land in the shard directory, which must be shared by all nodes on a cluster. Ray is an
optional extra (``pip install 'lm-atlas[ray]'``) and is imported only by ``--ray``.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace

from atlas.bulk.worker import Task, run_task
from atlas.errors import AtlasError

LOCAL = "local"  # --ray without an address: start Ray on this machine


class RayBackend:
    name = "ray"

    def __init__(self, address: str, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise AtlasError("--ray needs Ray: pip install 'lm-atlas[ray]' (or run without "
                             "--ray: --workers N uses processes on this machine)") from None
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            local = address == LOCAL
            ray.init(address=None if local else address, include_dashboard=False,
                     log_to_driver=False,
                     **({"num_cpus": workers} if local and workers else {}))
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        self.workers = workers or gpus or cpus
        self.threads = 1 if gpus else max(1, cpus // self.workers)
        self._remote = ray.remote(run_task).options(
            num_gpus=1 if gpus else 0, num_cpus=self.threads, max_retries=0)

    def submit(self, task: Task) -> Future:
        return self._remote.remote(replace(task, threads=self.threads)).future()

    def shutdown(self) -> None:
        if self._owns:
            self._ray.shutdown()
