"""Tiny random models of the families whose adapters are declared but have no shipped model, built offline.

``CASES``: model class name -> (tiny model, forward kwargs of one call), for tests/test_adapters.py.
"""

from __future__ import annotations

import torch

CASES = {}
