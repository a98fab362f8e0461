"""Developer tools for the engines: tiny replicas in the published layouts, and precision
diagnostics. Used by tests, benchmarks and ``soundscape dev``; never by a render.
"""
