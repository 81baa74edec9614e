#!/usr/bin/env python
"""Classify raw review text: python scripts/predict.py --checkpoint FILE [--json] TEXT..."""
import sys

from gru_torch.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
