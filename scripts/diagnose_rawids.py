#!/usr/bin/env python
"""Why notebook B (`gru50-rawids`) cannot learn: measured on a trained checkpoint.

  python scripts/diagnose_rawids.py --checkpoint runs/presets/gru50-rawids/best.pt \
      --data ../shared/data/aclImdb_v1-text.tar.gz

It feeds each word's id (up to 29,999) to GRU(50) as one float. The first layer's gate
pre-activation for a word is then id * w + b plus a recurrent term of at most
sum_j |W_hh[k, j]| (the state lies in [-1, 1]). Where |id * w + b| exceeds that bound by 4,
the gate is saturated (sigmoid within 0.018 of 0 or 1) whatever the state: the word only
flips gates, and its id's size, which carries no meaning, decides which way. The script
counts those saturated gates for the trained model and for a fresh one, how many test
reviews are read after trailing padding ('post'), and how the GRU(1) state, a tanh read as
a probability, is spread: after enough zero steps it forgets the review. It writes a JSON
and a Markdown summary.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gru_torch import presets  # noqa: E402
from gru_torch.data import imdb  # noqa: E402
from gru_torch.data.sequence import pad_sequences  # noqa: E402
from gru_torch.train import load_checkpoint, model_from_checkpoint  # noqa: E402

MARGIN = 4.0  # sigmoid(-4) = 0.018; tanh(4) within 0.0007 of 1
# Where a hard sigmoid's clip holds: exactly saturated past it (Keras 2: 0.2x + 0.5;
# Keras 3: x/6 + 0.5).
HARD_MARGIN = {"hard_sigmoid_keras2": 2.5, "hard_sigmoid_keras3": 3.0}


def saturation(layer, ids: np.ndarray) -> dict:
    """Per gate (r, z, n) of the first GRU layer: the share of (real word, unit) pairs whose
    input term alone saturates the gate, whatever the recurrent state. The r and z gates
    take the layer's gate function (a hard sigmoid saturates exactly past its clip), the
    candidate n a tanh."""
    gate_margin = HARD_MARGIN.get(layer.cell.recurrent_activation, MARGIN)
    w = layer.weight_ih_l0.detach()[:, 0].double()            # [3H]
    b = layer.bias_ih_l0.detach().double()
    bound = layer.weight_hh_l0.detach().double().abs().sum(1)  # max |recurrent term|
    words = torch.from_numpy(ids[ids > 0]).double()            # real words, pads left out
    H = layer.hidden_size
    out = {}
    for g, name in enumerate("rzn"):
        sl = slice(g * H, (g + 1) * H)
        pre = words[:, None] * w[None, sl] + b[None, sl]
        margin = MARGIN if name == "n" else gate_margin
        out[name] = float((pre.abs() > bound[None, sl] + margin).double().mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gru50-rawids-diagnosis")
    args = ap.parse_args(argv)
    preset = presets.get("gru50-rawids")
    state = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(state).eval()
    if model.config.input_mode != "raw":
        raise SystemExit(f"{args.checkpoint} is not a gru50-rawids checkpoint "
                         f"(input_mode {model.config.input_mode!r})")
    _, (x_test, y_test) = imdb.load_data(args.data, num_words=preset.num_words)
    x = pad_sequences(x_test, maxlen=preset.maxlen, padding="post").astype(np.int64)
    lengths = np.array([min(len(s), preset.maxlen) for s in x_test])
    torch.manual_seed(0)
    fresh = presets.build("gru50-rawids")

    with torch.no_grad():
        states = torch.cat([torch.sigmoid(model(torch.from_numpy(x[i:i + 1000])))
                            for i in range(0, len(x), 1000)]).numpy()
    # the model returns logit(clamp(state)); sigmoid gives the clamped state back
    pred = states > 0.5
    res = {
        "checkpoint": str(args.checkpoint),
        "test_reviews": int(len(x)),
        "largest_id": int(x.max()),
        "saturated_gates_trained": saturation(model.layers[0], x),
        "saturated_gates_fresh": saturation(fresh.layers[0], x),
        "share_read_after_padding": float((lengths < preset.maxlen).mean()),
        "median_trailing_pad_steps": float(np.median(preset.maxlen - lengths)),
        "share_state_at_or_below_zero": float((states <= 1e-6).mean()),
        "share_predicted_positive": float(pred.mean()),
        "test_accuracy": float((pred == (y_test > 0.5)).mean()),
        # after many zero steps the state drifts to where the zero input leads, whatever
        # the review was: compare its spread there with the unpadded reviews'
        "share_after_50_pad_steps": float((preset.maxlen - lengths >= 50).mean()),
        "state_std_full_length": float(states[lengths == preset.maxlen].std()),
        "state_std_after_50_pad_steps": float(states[preset.maxlen - lengths >= 50].std()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    pct = lambda v: f"{v:.1%}"  # noqa: E731
    st, sf = res["saturated_gates_trained"], res["saturated_gates_fresh"]
    lines = [
        "| measure (test split) | value |", "|---|---|",
        f"| largest word id fed as a float | {res['largest_id']:,} |",
        f"| first-layer gates saturated by the word alone, trained (r / z / n) | "
        f"{pct(st['r'])} / {pct(st['z'])} / {pct(st['n'])} |",
        f"| the same, freshly initialized | {pct(sf['r'])} / {pct(sf['z'])} / {pct(sf['n'])} |",
        f"| reviews whose state is read after trailing padding | "
        f"{pct(res['share_read_after_padding'])} (median {res['median_trailing_pad_steps']:.0f} steps) |",
        f"| reviews read after 50 or more pad steps | {pct(res['share_after_50_pad_steps'])} |",
        f"| spread (std) of the GRU(1) state: unpadded reviews / after 50+ pad steps | "
        f"{res['state_std_full_length']:.4f} / {res['state_std_after_50_pad_steps']:.4f} |",
        f"| GRU(1) state at or below 0 (read as probability 1e-7) | "
        f"{pct(res['share_state_at_or_below_zero'])} |",
        f"| predicted positive | {pct(res['share_predicted_positive'])} |",
        f"| test accuracy | {pct(res['test_accuracy'])} |",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
