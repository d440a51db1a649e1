"""Run the `outrank` package's CLI (0.97.5) with its string hashing fixed for xxhash >= 3, which wants bytes.

Runs inside the peer's own virtualenv (see scripts/compare_outrank.py); muxrec never imports it.
"""

import sys

import xxhash
import outrank.core_utils


def internal_hash(value):
    data = value if isinstance(value, bytes) else str(value).encode()
    return xxhash.xxh32(data, seed=20141025).hexdigest()


for module in list(sys.modules.values()):
    if getattr(module, "__name__", "").startswith("outrank") and hasattr(module, "internal_hash"):
        module.internal_hash = internal_hash
outrank.core_utils.internal_hash = internal_hash

from outrank.__main__ import main  # noqa: E402  (after the patch)

sys.exit(main())
