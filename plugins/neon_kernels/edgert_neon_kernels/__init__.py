"""edgert-neon-kernels: quantized GGUF matrix kernels in C for edge-rt (NEON, AVX2, portable)."""

from edgert_neon_kernels.backend import NeonBackend

__version__ = "0.1.0"

__all__ = ["NeonBackend", "__version__"]
