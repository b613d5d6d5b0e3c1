"""Test-session setup shared by every test module."""

import os

# Run Triton kernels under the interpreter on CPU-only machines. This must be set
# before triton is first imported (the @triton.jit decorator reads it), so it lives
# here, ahead of any test module. Set TRITON_INTERPRET=0 to compile for a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")
