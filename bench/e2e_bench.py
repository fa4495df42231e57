"""End-to-end benchmark (denoise + decode, TTFF, FPS per resolution); see apps/bench_e2e.py.

python bench/e2e_bench.py                                   # embedded default, 128 and 256
python bench/e2e_bench.py --preset nano --height 32 --width 32 --frames 24
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import apps  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # run from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.bench_e2e import main

if __name__ == "__main__":
    raise SystemExit(main())
