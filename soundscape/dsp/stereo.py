"""Stereo: constant-power panning, decorrelated wide beds, width, and downmixing.

Input: float32 ``(channels, frames)`` audio. Output: the same with the channels a scene wants:
a mono take panned or widened into stereo (two all-pass cascades, flat and centred), or a
recording with more channels folded down with ITU-R BS.775 coefficients.
"""

from __future__ import annotations

import functools
import math

import numpy as np


def pan_gains(pan: float) -> tuple[float, float]:
    """Constant-power pan law: (left, right) gains; centre is -3 dB on each side."""
    theta = (pan + 1.0) * math.pi / 4.0
    return math.cos(theta), math.sin(theta)


def to_channels(audio: np.ndarray, pan: float, channels: int) -> np.ndarray:
    """Place ``(1|2, frames)`` audio in ``channels`` outputs: mono is panned with the
    constant-power law, stereo is balanced, a mono scene gets the average."""
    if channels == 1:
        return audio.mean(axis=0, keepdims=True) if audio.shape[0] > 1 else audio
    if audio.shape[0] == 1:
        gl, gr = pan_gains(pan)
        return np.concatenate([audio * np.float32(gl), audio * np.float32(gr)])
    left = np.float32(1.0 - max(pan, 0.0))
    right = np.float32(1.0 + min(pan, 0.0))
    return np.stack([audio[0] * left, audio[1] * right])


DECORRELATOR_STAGES = 4
# the stages' delays add up to this in both channels: 2 ms keeps the mids decorrelated while the
# mid, advanced by at most DECORRELATOR_ADVANCE_S, lands within 1 ms of where it is placed
DECORRELATOR_DELAY_S = 0.002
# the most the output is advanced: the part of the response before the mid's peak plays that
# much ahead of the placement (advanced by a 6 ms lag, a click arrived 5-6 ms early with 36-54 %
# of its energy, and a take lost that part of its opening)
DECORRELATOR_ADVANCE_S = 0.001


def _allpass_delays(rng: np.random.Generator, total: int) -> np.ndarray:
    weights = rng.uniform(0.5, 1.5, DECORRELATOR_STAGES)
    delays = np.maximum(1, np.round(weights / weights.sum() * total)).astype(int)
    delays[-1] += total - delays.sum()
    return delays


@functools.lru_cache(maxsize=64)
def decorrelator_design(seed: int, sample_rate: int) -> tuple[tuple[np.ndarray, np.ndarray],
                                                             tuple[np.ndarray, np.ndarray]]:
    """Delays (frames) and gains of two Schroeder all-pass cascades, (left, right).

    Both cascades are all-pass, so each channel keeps the input's magnitude at every frequency
    (flat, and R/L is 0 dB in every band). Their delays add up to the same total: an all-pass's
    energy-weighted mean delay is its total delay, so both channels' energy arrives centred on
    the same instant (no precedence pull to either side). The last right gain is solved so that
    both cascades have the same group delay at low frequencies, where sum(M (1+g)/(1-g)) rules:
    bass stays in phase between the channels (mono-compatible) while the mids and highs are
    decorrelated. Designs whose energy arrives earlier on one side (the first 10 % or half of
    it more than 0.25 ms apart) are drawn again. Deterministic per seed; the design is in
    seconds, so it sounds alike at any rate.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    total = max(2 * DECORRELATOR_STAGES, round(DECORRELATOR_DELAY_S * sample_rate))
    for _ in range(1000):
        dl, dr = _allpass_delays(rng, total), _allpass_delays(rng, total)
        gl = rng.uniform(0.4, 0.7, DECORRELATOR_STAGES) * rng.choice([-1.0, 1.0],
                                                                       DECORRELATOR_STAGES)
        gr = rng.uniform(0.4, 0.7, DECORRELATOR_STAGES) * rng.choice([-1.0, 1.0],
                                                                       DECORRELATOR_STAGES)
        rest = float(np.sum(dl * (1 + gl) / (1 - gl)) - np.sum(dr[:-1] * (1 + gr[:-1])
                                                               / (1 - gr[:-1])))
        m = float(dr[-1])
        if not (rest > 0 and 0.3 <= abs((rest - m) / (rest + m)) <= 0.75):
            continue
        gr[-1] = (rest - m) / (rest + m)
        # the energy must also arrive alike: the first 10 % and half of it within 0.25 ms
        arrivals = [_energy_arrivals(allpass_response(d, g, 30 * total))
                    for d, g in ((dl, gl), (dr, gr))]
        if np.abs(arrivals[0] - arrivals[1]).max() <= 0.00025 * sample_rate:
            return (dl, gl), (dr, gr)
    raise AssertionError("no decorrelator design found")  # never: most draws qualify


def _energy_arrivals(h: np.ndarray) -> np.ndarray:
    """Frames by which 10 % and 50 % of the response's energy have arrived."""
    cum = np.cumsum(h**2)
    return np.searchsorted(cum, np.array([0.1, 0.5]) * cum[-1]).astype(float)


def allpass_response(delays: np.ndarray, gains: np.ndarray, length: int) -> np.ndarray:
    """Impulse response (``length`` frames, float64) of a cascade of Schroeder all-passes
    ``(-g + z^-M) / (1 - g z^-M)``."""
    from scipy.signal import lfilter

    h = np.zeros(length)
    h[0] = 1.0
    for m, g in zip(delays, gains, strict=True):
        b = np.zeros(m + 1)
        a = np.zeros(m + 1)
        b[0], b[m], a[0], a[m] = -g, 1.0, 1.0, -g
        h = lfilter(b, a, h)
    return h


def decorrelate(audio: np.ndarray, seed: int, width: float, sample_rate: int = 48000) \
        -> np.ndarray:
    """Mono ``(1, frames)`` -> stereo ``(2, frames)``: each channel is the input through its
    own short all-pass cascade (``decorrelator_design``), then mid/side ``width`` scales the
    difference. Flat and centred by construction; the responses are run as FIRs truncated
    where less than 1e-9 of their energy is left, and both advanced by the mid's lag
    (``decorrelator_lag``) up to ``DECORRELATOR_ADVANCE_S``, so the element lands within 1 ms
    of where it is placed (it came 6 ms late) and nothing plays more than 1 ms before it."""
    from scipy.signal import oaconvolve

    n = audio.shape[1]
    lag = min(decorrelator_lag(seed, sample_rate), round(DECORRELATOR_ADVANCE_S * sample_rate))
    out = []
    for h in _decorrelator_firs(seed, sample_rate):
        # both channels advanced alike: a pure delay, so the bands stay flat and the image
        # centred, while the element lands where it is placed
        out.append(oaconvolve(audio[0], h)[lag:lag + n])
    return widen(np.stack(out).astype(np.float32), width)


@functools.lru_cache(maxsize=64)
def _decorrelator_firs(seed: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The two cascades' responses as float32 FIRs, truncated where less than 1e-9 of their
    energy is left (and at least past ``decorrelator_lag``)."""
    (dl, gl), (dr, gr) = decorrelator_design(seed, sample_rate)
    length = int(sum(dl)) * 60
    firs = []
    for d, g in ((dl, gl), (dr, gr)):
        h = allpass_response(d, g, length)
        energy = np.cumsum(h[::-1] ** 2)[::-1]  # energy from each frame on
        h = h[: max(int(sum(d)) + 1, int(np.count_nonzero(energy > 1e-9 * energy[0])))]
        firs.append(h.astype(np.float32))
    return firs[0], firs[1]


@functools.lru_cache(maxsize=64)
def decorrelator_lag(seed: int, sample_rate: int) -> int:
    """Frames by which the decorrelator's mid (L + R) lags its input: where the mid's response
    peaks, which is where a decorrelated copy of a sound correlates best with the sound (the
    cascades' summed delays, ``DECORRELATOR_DELAY_S``, for most designs). ``decorrelate``
    advances its output by it."""
    left, right = _decorrelator_firs(seed, sample_rate)
    k = min(left.size, right.size)
    return int(np.argmax(np.abs(left[:k].astype(np.float64) + right[:k])))


def widen(stereo: np.ndarray, width: float) -> np.ndarray:
    """Scale the side (L-R) of ``(2, frames)`` by ``width`` (0: mono, 1: unchanged)."""
    mid = (stereo[0] + stereo[1]) * 0.5
    side = (stereo[0] - stereo[1]) * 0.5 * np.float32(width)
    return np.stack([mid + side, mid - side]).astype(np.float32)


# ITU-R BS.775 downmix to stereo, per input layout in WAV/SMPTE channel order:
# (left gains, right gains); the LFE is dropped.
_S = math.sqrt(0.5)
DOWNMIX_TO_STEREO: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    3: ((1.0, 0.0, _S), (0.0, 1.0, _S)),  # L R C
    4: ((1.0, 0.0, _S, 0.0), (0.0, 1.0, 0.0, _S)),  # quad: L R Ls Rs
    5: ((1.0, 0.0, _S, _S, 0.0), (0.0, 1.0, _S, 0.0, _S)),  # 5.0: L R C Ls Rs
    6: ((1.0, 0.0, _S, 0.0, _S, 0.0), (0.0, 1.0, _S, 0.0, 0.0, _S)),  # 5.1: L R C LFE Ls Rs
    # 7.1: L R C LFE Lrs Rrs Lss Rss
    8: ((1.0, 0.0, _S, 0.0, _S, 0.0, _S, 0.0), (0.0, 1.0, _S, 0.0, 0.0, _S, 0.0, _S)),
}


def downmix(audio: np.ndarray, channels_out: int) -> np.ndarray:
    """Fold ``(channels, frames)`` audio down to ``channels_out`` (1 or 2) channels.

    More than two channels go to stereo with ITU-R BS.775 coefficients for the layouts in
    ``DOWNMIX_TO_STEREO`` (5.1: L + 0.707 C + 0.707 Ls, R + 0.707 C + 0.707 Rs, LFE dropped;
    WAV/SMPTE order L R C LFE Ls Rs); other counts put even channels left and odd channels
    right, averaged. Mono is the average of the stereo pair. Fewer channels than asked are
    returned as they are (panning places them). Returns float32.
    """
    if channels_out not in (1, 2):
        raise ValueError(f"channels_out must be 1 or 2, not {channels_out}")
    ch = audio.shape[0]
    if ch <= channels_out:
        return audio
    if ch > 2:
        if ch in DOWNMIX_TO_STEREO:
            m = np.array(DOWNMIX_TO_STEREO[ch], dtype=np.float32)
            audio = m @ audio.astype(np.float32, copy=False)
        else:
            audio = np.stack([audio[0::2].mean(axis=0), audio[1::2].mean(axis=0)])
    if channels_out == 1:
        audio = audio.mean(axis=0, keepdims=True)
    return audio.astype(np.float32, copy=False)


