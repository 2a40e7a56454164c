"""BitNet b1.58 inference (ternary weights, int8 activations) on the CPU.

>>> import bitnet
>>> model = bitnet.Model()            # the bundled demo model; or a path, or "hf:OWNER/REPO"
>>> model.generate("ROMEO:\\n", max_tokens=16, temperature=0)
"""

from ._bitnet import DEMO_MODEL_NAME, BitnetError, Completion, Model, Stream, __version__

__all__ = ["Model", "Stream", "Completion", "BitnetError", "DEMO_MODEL_NAME", "__version__"]
