"""Packed DeltaDQ deltas applied next to one resident base: ``y = x·W_baseᵀ + x·ΔŴᵀ``.

Triton kernels on CUDA when triton is installed, the torch reference elsewhere. Imports only torch,
(lazily) triton and ``compression.packed``, so an inference host needs neither the server nor triton.

    from deltazoo.kernels import patch_model, set_active_deltas
    patch_model(base_model, load_artifact("math.safetensors"))          # one fine-tune
    patch_model(base_model, [math, code]); set_active_deltas(base_model, [0, 1, -1])  # several
    # each row runs with its fine-tune's own embeddings, head, norms and biases (kernels/rows.py)
"""

from .module import DeltaLinear, active_deltas, delta_layers, patch_model, set_active_deltas, unpatch_model
from .ops import batched_delta_add_, delta_matmul, linear_with_delta, triton_available
from .reference import batched_delta_matmul_reference, delta_matmul_reference
from .rows import PerRowModule
from .stacked import StackedDeltas, stack_deltas
from .synthetic import random_packed_delta

__all__ = [
    "DeltaLinear",
    "PerRowModule",
    "StackedDeltas",
    "active_deltas",
    "batched_delta_add_",
    "batched_delta_matmul_reference",
    "delta_layers",
    "delta_matmul",
    "delta_matmul_reference",
    "linear_with_delta",
    "patch_model",
    "random_packed_delta",
    "set_active_deltas",
    "stack_deltas",
    "triton_available",
    "unpatch_model",
]
