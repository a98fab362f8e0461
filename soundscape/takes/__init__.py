"""Takes stage: plan the takes a scene needs, keep them in the content-addressed store, generate
what is missing, and conform stored takes to the scene (``plan``, ``store``, ``run``, ``conform``).
"""
