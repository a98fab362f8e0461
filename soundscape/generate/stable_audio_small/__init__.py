"""Generator stage: Stable Audio Open Small without stable-audio-tools.

Input: a folder holding the published ``model_config.json`` + ``model.ckpt`` (stable-audio-tools'
layout) and a cached ``t5-base``; prompts, durations and seeds. Output: float32 stereo takes
``(2, frames)`` at 44.1 kHz. This ``__init__`` imports no torch; ``model``, ``sample`` and
``bench`` do, and only the engine imports them:

    from soundscape.generate.stable_audio_small.model import load_small
    from soundscape.generate.stable_audio_small.sample import generate_small
    from soundscape.generate.stable_audio_small.tiny import write_tiny_small

``config`` and ``sat_layout`` are torch-free (the config's reading and the checkpoint's layout).
"""
