"""Keras's default initializers, alone and as the presets use them."""
import math

import pytest
import torch
from torch import nn

from gru_torch import GRU, initializers, presets
import gru_torch
from gru_torch.models import ModelConfig, SentimentClassifier


def _assert_uniform(t, limit):
    """Inside +-limit, and filling it: the extremes near the limit, variance limit^2 / 3."""
    t = t.detach().flatten().double()
    assert t.abs().max() <= limit
    assert t.abs().max() > 0.95 * limit
    # the sample variance of n uniforms has relative sd sqrt(0.8 / n); allow 5 of them
    assert abs(t.var().item() / (limit ** 2 / 3) - 1) < 5 * math.sqrt(0.8 / t.numel())


def test_glorot_uniform_uses_both_fans():
    torch.manual_seed(0)
    w = initializers.glorot_uniform_(torch.empty(384, 128))  # a GRU(128) kernel, transposed
    _assert_uniform(w, math.sqrt(6 / (128 + 384)))


def test_orthogonal_recurrent_kernel_has_orthonormal_columns():
    torch.manual_seed(0)
    w = initializers.orthogonal_(torch.empty(96, 32, dtype=torch.double))
    torch.testing.assert_close(w.t() @ w, torch.eye(32, dtype=torch.double))


def test_unit_forget_bias_slices_and_checks_shape():
    b = initializers.unit_forget_bias_(torch.full((16,), 7.0), 4)
    assert b.tolist() == [0.0] * 4 + [1.0] * 4 + [0.0] * 8
    with pytest.raises(ValueError, match="hidden size 5"):
        initializers.unit_forget_bias_(torch.empty(16), 5)
    with pytest.raises(ValueError, match="2-D"):
        initializers.glorot_uniform_(torch.empty(3))


@pytest.mark.parametrize("make", [
    lambda: gru_torch.LSTM(10, 8, num_layers=2, bidirectional=True, single_bias=True),
    lambda: nn.LSTM(10, 8, num_layers=2, bidirectional=True),
])
def test_lstm_gets_a_forget_bias_of_one_in_total(make):
    torch.manual_seed(0)
    m = initializers.keras_recurrent_init_(make())
    biases = {n: p for n, p in m.named_parameters() if n.startswith("bias")}
    for name, p in m.named_parameters():
        if name.startswith("weight_hh"):
            torch.testing.assert_close(p.t() @ p, torch.eye(8), atol=1e-5, rtol=0)
        if name.startswith("weight_ih"):
            _assert_uniform(p, math.sqrt(6 / sum(p.shape)) + 1e-7)
    for suffix in ("_l0", "_l1", "_l0_reverse", "_l1_reverse"):
        total = sum(p for n, p in biases.items() if n.endswith(suffix))
        assert total.tolist() == [0.0] * 8 + [1.0] * 8 + [0.0] * 16


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_biases_start_at_zero(reset_after):
    m = initializers.keras_recurrent_init_(GRU(5, 4, reset_after=reset_after, bidirectional=True))
    names = [n for n, _ in m.named_parameters() if n.startswith("bias")]
    assert len(names) == (4 if reset_after else 2)
    assert all(not getattr(m, n).any() for n in names)


def test_presets_start_from_keras_initializers():
    torch.manual_seed(0)
    m = presets.build("gru128")
    _assert_uniform(m.embedding.weight, 0.05)
    _assert_uniform(m.layers[0].weight_ih_l0, math.sqrt(6 / (128 + 384)) + 1e-7)
    assert not m.head[-1].bias.any()
    # notebook D: one-hot words into the gates, the embedding is Keras's [10000, 96] kernel
    d = presets.build("gru32-onehot")
    _assert_uniform(d.embedding.weight, math.sqrt(6 / (10000 + 96)) + 1e-7)
    a = presets.build("gru100-recdrop")  # Dense(250, relu) on the GRU(100) state
    dense = a.head[0]
    _assert_uniform(dense.weight, math.sqrt(6 / (100 + 250)) + 1e-7)
    assert not dense.bias.any()


def test_init_option_is_checked_and_torch_is_the_default():
    with pytest.raises(ValueError, match="init must be one of"):
        ModelConfig(init="he")
    torch.manual_seed(0)
    m = SentimentClassifier(ModelConfig(vocab_size=1000, embed_dim=64))
    assert m.embedding.weight.abs().max() > 1  # nn.Embedding's N(0, 1)
