"""The sentiment classifier of the notebooks: embedding -> dropout -> recurrent stack ->
dense head -> one logit. Parameter counts follow Keras (one bias per recurrent layer
where Keras keeps one)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from . import cellspec, initializers
from .gru import GRU
from .lstm import LSTM
from .rnn import RNN

INPUT_MODES = ("embedding", "onehot", "raw")
CELLS = ("gru", "lstm", "rnn")
INITS = ("torch", "keras")


@dataclass
class ModelConfig:
    vocab_size: int = 10000
    input_mode: str = "embedding"   # "onehot": words straight into the gates; "raw": ids as a float
    embed_dim: int = 128
    embed_dropout: float = 0.0
    cell: str = "gru"
    hidden: list[int] = field(default_factory=lambda: [128])  # one entry per layer
    bidirectional: bool = False
    dropout: float = 0.0             # Keras's `dropout`: on each recurrent layer's input
    recurrent_dropout: float = 0.0
    dropout_masks: str = "shared"    # "per_gate": one mask per gate (Keras 3, Keras 2's impl. 1)
    reset_after: bool = True
    recurrent_activation: str = "sigmoid"  # GRU/LSTM gates (gru_torch.cellspec)
    head: list[int] = field(default_factory=list)  # relu Dense sizes before the logit
    head_dropout: float = 0.0
    logit: bool = True               # False: the last layer's state is the probability (Keras B)
    pooling: str = "last"            # "last": each row's state at its length; "last+max": and
                                     # the max of the last layer's outputs over its steps
    init: str = "torch"              # "keras": Keras's default initializers (see initializers.py)
    backend: str = "auto"

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {self.input_mode!r}")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden must list positive layer sizes, got {self.hidden!r}")
        if self.input_mode == "onehot" and self.cell != "gru":
            raise ValueError("input_mode='onehot' is implemented for the GRU cell only")
        cellspec.check_recurrent_activation(self.recurrent_activation)
        cellspec.check_dropout_masks(self.dropout_masks)
        if self.cell == "rnn" and self.recurrent_activation != "sigmoid":
            raise ValueError("recurrent_activation is for the GRU and LSTM gates; a SimpleRNN "
                             "has none")
        if not self.logit and (self.head or self.hidden[-1] != 1 or self.bidirectional):
            raise ValueError("logit=False needs a last recurrent layer of size 1 and no head")
        if self.pooling not in ("last", "last+max"):
            raise ValueError(f"pooling must be 'last' or 'last+max', got {self.pooling!r}")
        if self.pooling != "last" and not self.logit:
            raise ValueError("pooling='last+max' needs logit=True")

    def to_dict(self) -> dict:
        return asdict(self)


class SentimentClassifier(nn.Module):
    """forward(ids [B, T] int64, lengths [B] or None) -> logits [B]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        D = 2 if c.bidirectional else 1
        if c.input_mode == "embedding":
            self.embedding = nn.Embedding(c.vocab_size, c.embed_dim)
            in_size = c.embed_dim
        elif c.input_mode == "onehot":
            # one_hot(x) W_ih^T is row x of W_ih^T: an embedding straight into the gates.
            self.embedding = nn.Embedding(c.vocab_size, 3 * c.hidden[0])
            in_size = 3 * c.hidden[0]
        else:
            self.embedding = None
            in_size = 1
        self.layers = nn.ModuleList()
        for i, h in enumerate(c.hidden):
            # the one-hot GRU's first input product is the embedding: no dropout before it
            first_onehot = c.input_mode == "onehot" and i == 0
            self.layers.append(self._layer(in_size, h, 0.0 if first_onehot else c.dropout))
            in_size = h * D
        if c.input_mode == "onehot":
            first = self.layers[0]
            G = 3 * c.hidden[0]
            for name in [n for n, _ in first.named_parameters() if n.startswith("weight_ih")]:
                delattr(first, name)
                first.register_buffer(name, torch.eye(G), persistent=False)
        head, size = [], in_size * (2 if c.pooling == "last+max" else 1)
        for h in c.head:
            head += [nn.Linear(size, h), nn.ReLU(), nn.Dropout(c.head_dropout)]
            size = h
        if not c.head and c.head_dropout:
            head.append(nn.Dropout(c.head_dropout))  # Keras E: Dropout, then Dense(1)
        if c.logit:
            head.append(nn.Linear(size, 1))
        self.head = nn.Sequential(*head)
        if c.init == "keras":
            self.keras_init_()

    @torch.no_grad()
    def keras_init_(self) -> None:
        """Keras's defaults: Embedding U(+-0.05); the one-hot GRU's input kernel (held as
        the embedding) and every Dense kernel glorot_uniform; recurrent layers as
        `initializers.keras_recurrent_init_`; zero biases."""
        if self.config.input_mode == "embedding":
            initializers.embedding_uniform_(self.embedding.weight)
        elif self.config.input_mode == "onehot":
            initializers.glorot_uniform_(self.embedding.weight)
        for layer in self.layers:
            initializers.keras_recurrent_init_(layer)
        for m in self.head:
            if isinstance(m, nn.Linear):
                initializers.keras_dense_init_(m)

    def _layer(self, in_size: int, hidden: int, input_dropout: float) -> nn.Module:
        """One recurrent layer as Keras builds it: Keras's one bias for an LSTM and a
        SimpleRNN (a GRU keeps one with reset_after=False), its dropout on the layer's
        input and state, masks drawn per direction (a Bidirectional layer's two cells
        draw their own)."""
        c = self.config
        common = dict(batch_first=True, bidirectional=c.bidirectional,
                      recurrent_dropout=c.recurrent_dropout, input_dropout=input_dropout,
                      dropout_masks=c.dropout_masks, backend=c.backend)
        if c.cell == "gru":
            return GRU(in_size, hidden, reset_after=c.reset_after,
                       recurrent_activation=c.recurrent_activation, **common)
        if c.cell == "lstm":
            return LSTM(in_size, hidden, single_bias=True,
                        recurrent_activation=c.recurrent_activation, **common)
        return RNN(in_size, hidden, single_bias=True, **common)

    def forward(self, ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        if ids.dim() != 2:
            raise ValueError(f"ids must be [batch, time], got shape {tuple(ids.shape)}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be int64 token ids, got dtype {ids.dtype}")
        c = self.config
        if c.input_mode == "raw":
            x = ids.float().unsqueeze(-1)
        else:
            # a value check cannot run inside a traced graph (torch.export, torch.compile)
            if (not torch.compiler.is_compiling() and ids.numel()
                    and (int(ids.min()) < 0 or int(ids.max()) >= c.vocab_size)):
                raise ValueError(f"token ids must lie in [0, {c.vocab_size}), got "
                                 f"[{int(ids.min())}, {int(ids.max())}]")
            x = self.embedding(ids)
            x = nn.functional.dropout(x, c.embed_dropout, self.training)
        h_n = None
        for layer in self.layers:
            x, h_n = layer(x, lengths=lengths)
            if isinstance(layer, LSTM):
                h_n = h_n[0]
        D = 2 if c.bidirectional else 1
        final = torch.cat(list(h_n[-D:]), dim=-1)  # each row's state at its own length
        if c.pooling == "last+max":
            if lengths is not None:  # steps past a row's length must not win the max
                past = torch.arange(x.shape[1], device=x.device) >= lengths.to(x.device)[:, None]
                x = x.masked_fill(past.unsqueeze(-1), float("-inf"))
            final = torch.cat([final, x.amax(dim=1)], dim=-1)
        if not c.logit:
            # Keras B: a tanh state read as a probability, clipped as Keras's loss clips it
            p = final.squeeze(-1).clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)
        return self.head(final).squeeze(-1)
