"""The processes of a torchrun job: which one this is, its device, and the few messages that
split work among them.

``torchrun --nproc_per_node N script.py ...`` starts N copies of a script (on several machines
with ``--nnodes``, ``--node_rank`` and ``--rdzv_endpoint``); each reads its rank from the
environment. Only small Python objects pass between the processes (plans, finished work,
scores), never tensors, so the process group is always gloo: it serves CPUs and GPUs alike, and
each process runs its model on a GPU of its own when there are GPUs. When one process fails,
torchrun stops the others, so no process waits for a message that will not come.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

import cli

T = TypeVar("T")
# The ranks that finish first wait at the end for the others' share, which can take as long as
# the whole job: the timeout only guards against a lost process torchrun did not notice.
TIMEOUT = datetime.timedelta(days=30)


class Reported(cli.CLIError):
    """An error every rank met, which rank 0 reports: the other ranks stop without printing
    it again (``iSeeBetterTest.run`` makes them exit quietly)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (one process when not started by torchrun).

    Args:
        rank: this process's number, 0 to world - 1; rank 0 reports and writes shared results.
        world: the number of processes.
        device: where this process runs its model.
        sharing: the processes (this one included) whose models share the memory of this
            process's device: those of its machine on the CPU, those given the same GPU.
        here: the processes of the job on this machine (this one included), which share its
            CPU cores.
    """

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    sharing: int = 1
    here: int = 1

    @classmethod
    def start(cls, gpu_mode: bool, gpus: int = 1) -> Ranks:
        """Join the torchrun job described by the environment (``WORLD_SIZE``, ``RANK``,
        ``LOCAL_RANK``), or run alone. Under torchrun each process takes the GPU of its local
        rank (round robin when there are fewer GPUs than processes)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(device=cli.select_device(gpu_mode, gpus))
        rank = int(os.environ.get("RANK", "0"))
        local, here = int(os.environ.get("LOCAL_RANK", "0")), int(
            os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if gpus > 1:
            raise cli.CLIError(f"--gpus {gpus} under torchrun: each process uses one GPU; "
                               "start one process per GPU (--nproc_per_node) instead")
        if gpu_mode and torch.cuda.is_available():
            gpus_here = torch.cuda.device_count()
            torch.cuda.set_device(local % gpus_here)
            device = torch.device("cuda", local % gpus_here)
            sharing = len(range(local % gpus_here, here, gpus_here))
        else:
            if gpu_mode and rank == 0:
                print("note: no CUDA device found, running on the CPU", file=sys.stderr)
            device, sharing = torch.device("cpu"), here
        dist.init_process_group("gloo", timeout=TIMEOUT)
        return cls(rank, world, device, sharing, here)

    @property
    def first(self) -> bool:
        """Whether this is rank 0, the one that reports and writes shared results."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's items: every world-th, starting at its rank (round robin)."""
        return list(items[self.rank::self.world])

    def block(self, count: int) -> range:
        """This process's contiguous part of ``range(count)``: the world's parts are in rank
        order and differ in length by at most one."""
        return range(self.rank * count // self.world, (self.rank + 1) * count // self.world)

    def from_first(self, make: Callable[[], T]) -> T:
        """What ``make()`` returns on rank 0, on every rank (the others wait for it). A
        ``CLIError`` it raises stops every rank: rank 0 raises it, the others ``Reported``
        (else they would wait for a value that never comes, and each print the error)."""
        if self.world == 1:
            return make()
        message = [None]
        if self.first:
            try:
                message = [(True, make())]
            except cli.CLIError as err:
                dist.broadcast_object_list([(False, str(err))], src=0)
                raise
        dist.broadcast_object_list(message, src=0)
        made, value = message[0]
        if not made:
            raise Reported(value)
        return value

    def first_then_others(self, make: Callable[[], T]) -> T:
        """``make()`` on every rank, rank 0 first: a ``CLIError`` that every rank would meet
        (a missing model file, say) is then printed once, by rank 0, and stops them all."""
        if self.world == 1:
            return make()
        made: list[T] = []
        self.from_first(lambda: made.append(make()))
        return made[0] if self.first else make()

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value`` in rank order, on rank 0 (None on the others)."""
        if self.world == 1:
            return [value]
        values: list[T] | None = [None] * self.world if self.first else None
        dist.gather_object(value, values, dst=0)
        return values

    def wait(self, poll: Callable[[], None] | None = None, interval: float = 0.5) -> None:
        """Wait until every rank has got here, calling ``poll`` every ``interval`` seconds
        meanwhile and once more when all have arrived (rank 0 follows the others' progress
        that way: what the last rank did just before it arrived is seen too)."""
        if self.world == 1:
            return
        arrived = dist.barrier(async_op=True)
        while not arrived.is_completed():
            if poll is not None:
                poll()
            time.sleep(interval)
        arrived.wait()
        if poll is not None:
            poll()

    def dealt(self, items: Sequence[T], done: Callable[[T], bool]) -> list[T]:
        """This process's share (``share``) of the items not done yet: the same for every rank,
        whatever number of processes did the ones done."""
        return self.share([item for item in items if not done(item)])

    def close(self) -> None:
        """Leave the job's process group (nothing when running alone)."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def cpu_threads(cores: int, here: int, environ: Mapping[str, str],
                launcher: Mapping[str, str] | None) -> int | None:
    """The CPU threads each of ``here`` processes on a machine of ``cores`` cores should use:
    an equal share, unless the user chose ``OMP_NUM_THREADS`` (None: leave torch's choice).

    torchrun sets ``OMP_NUM_THREADS=1`` for its processes when it was not set, which leaves
    all but N cores idle. Its processes cannot tell that 1 from a user's, so a 1 counts as the
    user's only when ``launcher``, the environment torchrun itself was started with, has it
    (None when it cannot be read: then a 1 is taken as torchrun's).

    Args:
        cores: the CPU cores this process may use.
        here: the processes sharing them.
        environ: this process's environment.
        launcher: torchrun's own starting environment, or None.
    """
    chosen = environ.get("OMP_NUM_THREADS")
    if here < 2 or (chosen is not None and chosen != "1"):
        return None
    if chosen == "1" and launcher is not None and "OMP_NUM_THREADS" in launcher:
        return None
    return max(1, cores // here)


def launcher_environ() -> dict[str, str] | None:
    """The environment the parent process (torchrun, for its processes) was started with,
    as Linux keeps it in /proc: changes it made to its own environment afterwards, such as
    torchrun's OMP_NUM_THREADS, are not in it. None where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
