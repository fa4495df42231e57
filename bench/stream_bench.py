"""Streaming benchmark (rolling KV cache vs. no-cache baseline); see apps/bench.py.

python bench/stream_bench.py --preset tiny --blocks 2000 --baseline-blocks 100
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import apps  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # run from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
