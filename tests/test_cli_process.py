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
