"""``python benchmarks/run.py``: same as ``python -m benchmarks`` (see __main__.py)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.__main__ import main

    sys.exit(main())
