"""gru_torch: a fused GRU for PyTorch, a drop-in for torch.nn.GRU and nn.GRUCell with
Keras's cells."""
from ._ext import status as extension_status
from .backends import BACKENDS
from .cell import GRUCell
from .denormals import flush_denormal
from .gru import GRU
from .reference import gru_layer_reference

__all__ = ["GRU", "GRUCell", "BACKENDS", "extension_status", "flush_denormal", "gru_layer_reference"]
__version__ = "0.1.0"
