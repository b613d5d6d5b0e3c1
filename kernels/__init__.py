"""Triton kernels of dicache, imported as ``dicache.kernels``.

Kernels only: nothing here imports the engine, the hooks or the adapters.
"""
