"""The notebooks' models: Keras parameter counts, forward/backward, lengths, bad ids."""
import pytest
import torch

from gru_torch import presets
import gru_torch
from gru_torch.models import ModelConfig, SentimentClassifier


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_parameter_count_is_keras(name):
    model = presets.build(name)
    assert presets.count_parameters(model) == presets.get(name).keras_params


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_trains_one_step(name):
    torch.manual_seed(0)
    p = presets.get(name)
    model = presets.build(name).train()
    ids = torch.randint(1, p.model.vocab_size, (3, 12))
    lengths = torch.tensor([12, 5, 1])
    logits = model(ids, lengths)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1., 0., 1.]))
    loss.backward()
    grads = [q.grad for q in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("cell,bidirectional", [("gru", False), ("gru", True), ("lstm", False),
                                                ("lstm", True), ("rnn", False)])
def test_state_read_at_each_rows_length(cell, bidirectional):
    """Post-padding must not change a row's prediction: the state is read at its length."""
    torch.manual_seed(0)
    model = SentimentClassifier(ModelConfig(vocab_size=50, embed_dim=8, cell=cell, hidden=[6, 5],
                                            bidirectional=bidirectional)).eval()
    ids = torch.randint(1, 50, (2, 7))
    short = model(ids[:, :4], torch.tensor([4, 4]))
    padded = torch.cat([ids[:, :4], torch.zeros(2, 3, dtype=torch.long)], dim=1)
    post = model(padded, torch.tensor([4, 4]))
    torch.testing.assert_close(post, short)


def test_bad_token_ids_and_shapes():
    model = presets.build("gru128")
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[1, 10000]]))
    with pytest.raises(ValueError, match="ids must be"):
        model(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="int64"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(KeyError, match="unknown preset"):
        presets.build("gru-nope")


def test_max_pooling_ignores_padding():
    torch.manual_seed(0)
    model = SentimentClassifier(ModelConfig(vocab_size=50, embed_dim=8, hidden=[6],
                                            bidirectional=True, pooling="last+max")).eval()
    ids = torch.randint(1, 50, (2, 4))
    short = model(ids, torch.tensor([4, 4]))
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, torch.tensor([4, 4])), short)
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(pooling="mean")


def test_rawids_diagnosis_counts_only_gates_saturated_whatever_the_state():
    """scripts/diagnose_rawids.py: a gate counts as saturated by the word alone only where
    |id * w + b| exceeds the largest recurrent term (sum |W_hh row|) by the margin."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    from gru_torch import GRU
    path = Path(__file__).resolve().parents[1] / "scripts" / "diagnose_rawids.py"
    spec = importlib.util.spec_from_file_location("diagnose_rawids", path)
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    layer = GRU(1, 2, reset_after=False)
    with torch.no_grad():
        layer.weight_ih_l0.fill_(1.0)   # pre-activation = id
        layer.bias_ih_l0.zero_()
        layer.weight_hh_l0.fill_(0.5)   # |recurrent term| <= 1 for every unit
    ids = np.array([[0, 0, 3, 5], [6, 100, 0, 0]])  # pads (0) are left out
    # saturated where id > 1 + 4: ids 6 and 100 of the real words 3, 5, 6, 100
    assert diag.saturation(layer, ids) == {"r": 0.5, "z": 0.5, "n": 0.5}


def test_rawids_diagnosis_uses_the_hard_sigmoids_clip():
    """With Keras 2's hard sigmoid (notebook B's gates), r and z saturate exactly past
    |x| = 2.5, so the margin over the recurrent bound is 2.5; the candidate's tanh keeps 4."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    from gru_torch import GRU
    path = Path(__file__).resolve().parents[1] / "scripts" / "diagnose_rawids.py"
    spec = importlib.util.spec_from_file_location("diagnose_rawids", path)
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    layer = GRU(1, 2, reset_after=False, recurrent_activation="hard_sigmoid_keras2")
    with torch.no_grad():
        layer.weight_ih_l0.fill_(1.0)
        layer.bias_ih_l0.zero_()
        layer.weight_hh_l0.fill_(0.5)   # |recurrent term| <= 1
    ids = np.array([[4, 3, 6, 100]])
    # r, z: saturated where id > 1 + 2.5 (4, 6, 100); n: where id > 1 + 4 (6, 100)
    assert diag.saturation(layer, ids) == {"r": 0.75, "z": 0.75, "n": 0.5}
