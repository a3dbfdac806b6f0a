"""Moved to :mod:`densityformula.reverse` (the one reverse-process module); re-exported here."""
from ..reverse import (  # noqa: F401
    ReverseKernels,
    ddpm_kernels,
    default_discrete,
    em_kernels,
    input_scale,
    same_discrete,
    sampler_kernels,
)
