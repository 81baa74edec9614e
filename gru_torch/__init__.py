"""gru_torch: fused recurrent layers for PyTorch (GRU, LSTM, RNN), drop-ins for torch.nn's
modules and cells, with Keras's cells, dropout and layer import."""
from ._ext import status as extension_status
from .backends import BACKENDS
from .cell import GRUCell, LSTMCell, RNNCell
from .capability import cpu_capabilities, cpu_capability, set_cpu_capability
from .denormals import flush_denormal
from .gru import GRU
from .keras_import import KerasLayer, from_keras
from .lstm import LSTM
from .reference import gru_layer_reference, rnn_layer_reference
from .rnn import RNN

__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "RNNCell", "BACKENDS", "KerasLayer",
           "cpu_capabilities", "cpu_capability", "extension_status", "flush_denormal",
           "from_keras", "gru_layer_reference", "rnn_layer_reference", "set_cpu_capability"]
__version__ = "0.1.0"
