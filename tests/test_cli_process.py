"""What the command line sets up in its own process before it works (``cli._tune_process``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import env_without_pytest

CHECK = """
import os
import soundscape.cli as cli
cli._tune_process()
from threadpoolctl import threadpool_info
numpys = [i["num_threads"] for i in threadpool_info() if "numpy" in i["filepath"]]
import numpy as np
np.ones((400, 400), np.float32) @ np.ones(400, np.float32)
numpys = numpys or [i["num_threads"] for i in threadpool_info() if "numpy" in i["filepath"]]
print(numpys, os.environ.get("OPENBLAS_NUM_THREADS"))
"""


@pytest.mark.parametrize(("given", "threads", "left"), [
    (None, "[1]", "None"), ("3", f"[{min(3, os.cpu_count() or 1)}]", "3")])  # at most a core each
def test_numpys_blas_runs_on_one_thread_unless_told(given: str | None, threads: str,
                                                    left: str) -> None:
    """numpy's BLAS on one thread (its idle threads spun on the render's cores), set only for
    numpy: the variable is not left for torch's BLAS or the processes the command starts; a
    user's own setting stands."""
    env = env_without_pytest()
    env.pop("OPENBLAS_NUM_THREADS", None)
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == [threads, left]


def test_the_stem_stage_warms_glibcs_allocator_so_its_blocks_stop_faulting() -> None:
    """Megabyte blocks made and freed in turn fault in every page each time until glibc has
    seen one that large freed (its dynamic mmap threshold); ``warm_allocator`` shows it one, so
    the stem stage's blocks are reused (in a fresh interpreter: the rule is process-wide)."""
    import subprocess
    import sys

    code = """
import resource, sys
import numpy as np
from soundscape.mixer.workers import warm_allocator
if sys.argv[1] == "warm":
    warm_allocator()
np.ones(1 << 19, np.float32)  # glibc has seen 2 MiB come and go, as any program soon has
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):  # three 1.5 MiB blocks, touched, then freed: the heap's top gives back
    blocks = [np.ones(3 << 17, np.float32) for _ in range(3)]  # more than twice 2 MiB
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {how: int(subprocess.run([sys.executable, "-c", code, how], capture_output=True,
                                      text=True, check=True).stdout)
              for how in ("cold", "warm")}
    assert faults["cold"] > 50 * 500  # the blocks' pages faulted in afresh, round after round
    assert faults["warm"] < faults["cold"] / 10
