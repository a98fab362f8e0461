"""Plain DSP, the bottom layer: array in, array out (effects, stereo, fades, meter, bus,
DC blocker).

Nothing here knows a scene, a take or a file; every function takes and returns float32
``(channels, frames)`` arrays and plain numbers.
"""
