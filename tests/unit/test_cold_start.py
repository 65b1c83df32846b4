"""A worker loads its array libraries as it starts, not in its first batch: after a restart (a crash,
a deploy) that batch often carries the alert someone is waiting for."""

from __future__ import annotations

import subprocess
import sys


def test_the_processing_modules_load_numpy_pandas_and_pyarrow_at_import():
    code = ("import sys, trainmon.stream_processors.processing; "
            "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow', 'pyarrow.compute') if m not in sys.modules))")
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert missing == "[]", f"loaded lazily, in the first batch: {missing}"
