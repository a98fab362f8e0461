"""Review 7: the true-peak-only meter (``Meter(loudness=False)``, the sum's true peak read
beside its loudness) does without the K-weighting's imports, as its comment says: pyloudnorm
pulls in scipy.signal (over a second on a cold start here), and a peak meter needs neither."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import env_without_pytest

CHECK = """
import sys
import numpy as np
from soundscape.dsp.meter import Meter, measure
x = (0.5 * np.sin(np.pi / 2 * np.arange(48000) + np.pi / 4)).astype(np.float32)[None]
m = Meter(48000, 1, loudness=False)
m.add(x)
tp = m.finish().true_peak
assert tp > 0.49 > 1.3 * float(np.abs(x).max()), tp  # between the samples
assert measure(x, 48000, loudness=False).true_peak == tp
print(sorted(k for k in ("scipy.signal", "pyloudnorm") if k in sys.modules))
"""


def test_a_peak_meter_imports_neither_pyloudnorm_nor_scipy_signal() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         env=env_without_pytest(), check=True).stdout
    assert out.strip() == "[]"
