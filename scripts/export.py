#!/usr/bin/env python
"""Export a trained checkpoint: python scripts/export.py --checkpoint FILE --onnx model.onnx [--pt2 FILE]"""
import sys

from gru_torch.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
