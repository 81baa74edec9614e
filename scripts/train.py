#!/usr/bin/env python
"""Train an IMDB sentiment classifier: python scripts/train.py --cell gru [--preset NAME] ..."""
import sys

from gru_torch.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
