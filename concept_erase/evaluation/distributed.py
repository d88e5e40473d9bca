"""Several processes (``accelerate launch``) or one, behind the same four calls.

``accelerate launch --num_processes 4 -m concept_erase.cli eval ...`` starts one process per GPU;
each takes its share of the images (``shard``), torchmetrics states are reduced by torchmetrics
itself (its ``compute`` syncs over ``torch.distributed``), per-image scores are ``gather``-ed, and
only the main process writes reports. Run plainly, ``Dist()`` is a single process.

Metric states must live on :attr:`Dist.device`, the device the process group gathers from: NCCL
(accelerate's backend on GPUs) cannot gather CPU tensors.

On CPUs, ``accelerate launch --cpu`` starts a single process unless MPI is set up
(``--mpirun_hostfile``); ``accelerate launch --multi_gpu --num_processes 2`` (torchrun underneath)
does start two, and ``Dist`` then sets accelerate up on the CPU with the gloo backend, as it does
whenever several processes were launched and the machine has no accelerator.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from ..errors import InvalidConfigError

__all__ = ["Dist", "launched_processes"]


def launched_processes() -> int:
    """How many processes the launcher (``accelerate launch``, torchrun, mpirun) says it started (1 when none)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


class Dist:
    """Thin wrapper over ``accelerate.PartialState``.

    ``cpu=None`` decides as the launcher did: the CPU when ``accelerate launch --cpu`` set
    ``ACCELERATE_USE_CPU``, or when several processes were launched on a machine without an
    accelerator (``accelerate.PartialState`` would otherwise leave each of them alone, all doing the
    whole job and writing the same report).
    """

    def __init__(self, cpu: bool | None = None):
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        launched = launched_processes()
        if cpu is None:
            cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched > 1 and not torch.accelerator.is_available())
        self.state = PartialState(cpu=cpu)
        if launched > 1 and self.state.num_processes != launched:
            raise InvalidConfigError(
                f"The launcher started {launched} processes but accelerate set up {self.state.num_processes} "
                f"({self.state.distributed_type}); each would do the whole evaluation. Launch with "
                "`accelerate launch --num_processes N` (GPUs), or `accelerate launch --multi_gpu --num_processes N` "
                "on CPUs."
            )

    @property
    def device(self):
        return self.state.device

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def num_processes(self) -> int:
        return self.state.num_processes

    @property
    def index(self) -> int:
        return self.state.process_index

    def shard(self, items: Sequence) -> list:
        """This process's contiguous share of ``items`` (all of them in a single process)."""
        items = list(items)
        if self.num_processes == 1:
            return items
        with self.state.split_between_processes(items) as mine:
            return list(mine)

    def gather(self, items: list) -> list:
        """Concatenate every process's list, in process order (the list itself in a single process)."""
        if self.num_processes == 1:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if self.num_processes == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj])[0]

    def wait(self) -> None:
        self.state.wait_for_everyone()
