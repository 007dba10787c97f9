"""The paper's table at demo scale; same as `mol replicate`. Usage: python bench/replicate.py [--steps N]."""

import sys

from mol_cli.main import main

if __name__ == "__main__":
    sys.exit(main(["replicate", *sys.argv[1:]]))
