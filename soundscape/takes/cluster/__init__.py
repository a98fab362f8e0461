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

from types import ModuleType

from ...errors import SoundscapeError
from ...options import ClusterSpec

__all__ = ["INSTALL", "ClusterError", "ClusterSpec", "require_ray"]

INSTALL = ("install the extra: pip install 'soundscape[cluster]' (from a checkout: "
           "uv sync --extra cluster)")


class ClusterError(SoundscapeError):
    """The cluster cannot be used: Ray missing, unreachable, refused, or every worker lost."""


def require_ray() -> ModuleType:
    """Import Ray, or raise the one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--cluster needs Ray, which is not installed; {INSTALL}") from None
    return ray
