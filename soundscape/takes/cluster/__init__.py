"""Takes stage, cluster: generate the takes missing from the store on a Ray cluster.

Input: ``TakeRequest`` values the store lacks, a ``ClusterSpec`` (which cluster, how many
actors) and the generation settings. Output: the same takes in the same store, bit for bit what a
local run makes on the same kind of device, with the host and Ray node that made each recorded in
its sidecar (and so in the manifest). Only generation moves: planning, mixing, mastering and
writing stay in the command's process.

``connect`` joins (or starts) the cluster, ``worker`` is what runs there (one loaded model per
actor, behind the engine seam ``worker.build_engine``), ``job`` feeds it batches, writes or
checks what comes back, and handles dead actors and failing takes. Ray is an optional extra:
nothing here imports it until ``require_ray`` is called for a ``--cluster`` command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType

from ...errors import SoundscapeError

INSTALL = ("install the extra: pip install 'soundscape[cluster]' (from a checkout: "
           "uv sync --extra cluster)")
_REMOTE = re.compile(r"^ray://(?P<host>[^:/\s]+):(?P<port>\d{1,5})$")


class ClusterError(SoundscapeError):
    """The cluster cannot be used: Ray missing, unreachable, refused, or every worker lost."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where takes are generated: ``address`` is ``local`` (a throwaway cluster on this
    machine), ``ray`` (the cluster ``RAY_ADDRESS`` or ``ray start`` names) or
    ``ray://host:port`` (a remote cluster's client port). ``actors``: how many models to load at
    once (None: one per GPU, or one per CPU but one when the cluster has no GPUs)."""

    address: str
    actors: int | None = None

    @classmethod
    def parse(cls, address: str, actors: int | None = None) -> ClusterSpec:
        """Check the address's form (not whether anything answers there)."""
        if address not in ("local", "ray") and not _REMOTE.match(address):
            raise ClusterError(f"--cluster {address!r} is not a cluster address; use local, "
                               f"ray (RAY_ADDRESS or a 'ray start' cluster) or ray://host:port")
        if actors is not None and actors < 1:
            raise ClusterError(f"--actors {actors}: give at least 1")
        return cls(address, actors)

    def host_port(self) -> tuple[str, int] | None:
        """``(host, port)`` of a ``ray://`` address, else None."""
        m = _REMOTE.match(self.address)
        return (m["host"], int(m["port"])) if m else None


def require_ray() -> ModuleType:
    """Import Ray, or raise the one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--cluster needs Ray, which is not installed; {INSTALL}") from None
    return ray
