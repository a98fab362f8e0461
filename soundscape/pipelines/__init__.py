"""Pipelines: the commands' stage orders (render, sfx, audition, doctor), on top of every stage.
"""
