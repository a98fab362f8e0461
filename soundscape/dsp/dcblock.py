"""DC blocker: a sub-sonic high-pass for takes and recordings as they are conformed.

Input: float32 ``(channels, frames)`` audio and its rate. Output: the same shape, float32,
without its DC offset and sub-sonic drift.

A generated take can be nearly pure offset (a drone measured with a mean of -0.033 against an
RMS of 0.033); summed, such offsets move the mix off zero, and the limiter then flattens the
offset as if it were programme. A 2nd-order Butterworth high-pass at ``DC_CUTOFF_HZ`` removes
them, as a mastering chain's DC filter does: -0.26 dB at 30 Hz, -0.09 dB at 40 Hz, settled
within about 30 ms.

It is causal (``scipy.signal.sosfilt``): no frame moves earlier or later (its group delay is
about 0.02 ms at 1 kHz and a few ms only near the cutoff, where nothing audible lies), so a
one-shot's attack stays on its sample. A causal high-pass rings where a take starts abruptly
(a tone starting on its zero crossing came out 5 % over its level for a few ms; one starting
on its offset, with a thump of that offset), so the filter is first run over a warm-up that
continues the take backwards: its opening mirrored point-symmetrically about its opening offset
(the mean over one period of the cutoff), as ``scipy.signal.filtfilt``'s odd padding does, but
about the offset rather than the first sample, so a take that starts on an attack keeps it
whole. That output is dropped. The warm-up is only for a channel that starts on its offset
(its first sample nearer the opening's mean than zero); one that starts from silence, as a
one-shot does, is filtered from rest: its first sample is the source's (mirrored about a kick's
mean, a kick starting on 0 began on a step 10 dB under its peak); a tone that starts abruptly
on 0 then comes out up to 4 % over for its first 10 ms, the high-pass's own response to that
onset, as a DC filter on the whole mix would give. A take shorter than one
period of the cutoff (1/15 s) is left alone: whatever its mean, it is a click or a hit, not an
offset (its whole mean was taken off: a 1-frame hit vanished, a 30 ms kick ended on a step).
Worked in blocks in float64 (a 15 Hz pole pair at 96 kHz is too close to the unit circle for
float32 coefficients), so the only large buffer is the output.
"""

from __future__ import annotations

import functools

import numpy as np

DC_CUTOFF_HZ = 15.0
WARM_UP_CUTOFF_PERIODS = 3  # 200 ms: the filter settles in about 30 ms
_BLOCK = 1 << 17


@functools.cache
def _sections(sample_rate: int) -> np.ndarray:
    from scipy.signal import butter

    return np.asarray(butter(2, DC_CUTOFF_HZ, "highpass", fs=sample_rate, output="sos"))


def block_dc(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """``audio`` high-passed at ``DC_CUTOFF_HZ`` (a new float32 array); a take shorter than
    one period of the cutoff is returned as it is."""
    from scipy.signal import sosfilt, sosfilt_zi

    n = audio.shape[1]
    period = round(sample_rate / DC_CUTOFF_HZ)
    if n < period:
        return audio.astype(np.float32)  # too short to hold an offset apart from its signal
    out = np.empty(audio.shape, np.float32)
    sos = _sections(sample_rate)
    first = audio[:, 0].astype(np.float64)
    opening = audio[:, :period].mean(axis=1, dtype=np.float64)
    zi = sosfilt_zi(sos)[:, None, :] * opening[None, :, None]  # (sections, channels, 2)
    warm = min(n - 1, round(WARM_UP_CUTOFF_PERIODS * sample_rate / DC_CUTOFF_HZ))
    if warm > 0:
        before = 2 * opening[:, None] - audio[:, warm:0:-1].astype(np.float64)
        _, zi = sosfilt(sos, before, axis=-1, zi=zi)
    # a channel that starts nearer silence than its opening offset (a one-shot's attack from
    # zero) is filtered from rest, so it starts where the take starts
    zi[:, np.abs(first - opening) >= np.abs(first), :] = 0.0
    for start in range(0, n, _BLOCK):
        block = audio[:, start:start + _BLOCK].astype(np.float64)
        y, zi = sosfilt(sos, block, axis=-1, zi=zi)
        out[:, start:start + _BLOCK] = y
    return out
