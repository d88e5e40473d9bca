"""Several processes (``accelerate launch``) or one, behind the same four calls.

``accelerate launch --num_processes 4 -m concept_erase.cli eval ...`` starts one process per GPU;
each takes its share of the images (``shard``), torchmetrics states are reduced by torchmetrics
itself (its ``compute`` syncs over ``torch.distributed``), per-image scores are ``gather``-ed, and
only the main process writes reports. Run plainly, ``Dist()`` is a single process.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["Dist"]


class Dist:
    """Thin wrapper over ``accelerate.PartialState``."""

    def __init__(self, cpu: bool = False):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)

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
