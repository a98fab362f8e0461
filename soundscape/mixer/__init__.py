"""Mixer stage: one element's stem from its takes and plan (``element``), loops and their seams
(``loops``), stems rendered in worker processes (``workers``) and the resource budget (``budget``).
"""
