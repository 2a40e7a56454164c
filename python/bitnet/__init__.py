"""BitNet b1.58 inference (ternary weights, int8 activations) on the CPU.

>>> import bitnet
>>> model = bitnet.Model()            # the bundled demo model; or a path, or "hf:OWNER/REPO"
>>> model.generate("ROMEO:\\n", max_tokens=16, temperature=0)
>>> model.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], seed=1)
"""

from ._bitnet import (
    DEMO_MODEL_NAME,
    BitnetError,
    ChunkStream,
    Completion,
    Model,
    Stream,
    __version__,
)

__all__ = [
    "Model",
    "Stream",
    "ChunkStream",
    "Completion",
    "BitnetError",
    "DEMO_MODEL_NAME",
    "__version__",
]
