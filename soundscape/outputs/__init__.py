"""Outputs stage: what a render leaves on disk beside the audio: the manifest, the incremental
decisions, tags, loop files, pools, the SFX catalog and the audition page.
"""
