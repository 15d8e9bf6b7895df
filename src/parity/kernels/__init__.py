"""Transform kernels shared by the offline path (whole tables) and the online path (a batch's rows).

Every kernel is elementwise: the value of row ``i`` depends only on row ``i`` of the input and on
the kernel's parameters, never on the other rows, the number of rows or how the rows were split
into batches.  The loops are compiled with numba (``@njit(cache=True)``, never ``fastmath``), one
IEEE-754 operation sequence per element, so a table computed at once and the same rows computed one
at a time or in any batches are bit-for-bit identical.

Dtype rule of the floating-point kernels (``standard_scale``, ``min_max_scale``, ``log1p``): a
float32 input gives a float32 result, computed in float64 and rounded to float32 once at the end;
every other numeric input (float64, integers, bool) gives float64.  ``clip`` keeps the input dtype,
``bucketize`` returns int32 and ``stable_hash`` returns int64.

Modules (each documents its semantics):

- :mod:`parity.kernels.bucketize`: ``bucketize(values, edges)``
- :mod:`parity.kernels.scale`: ``standard_scale``, ``min_max_scale``
- :mod:`parity.kernels.clip`: ``clip(values, lo, hi)``
- :mod:`parity.kernels.log`: ``log1p(values, negative="signed"|"nan")``
- :mod:`parity.kernels.hashing`: ``stable_hash(values, buckets)`` (FNV-1a 64 + murmur3 fmix64)
"""

from __future__ import annotations

import os
import sys

# Intel SVML gives vectorised transcendental functions (log1p) whose last bit may differ from the
# scalar libm call that handles a loop's remainder, so a row's value would depend on its position
# in the array.  Turn it off when numba has not been imported yet (numba reads this at import).
if "numba" not in sys.modules:
    os.environ.setdefault("NUMBA_DISABLE_INTEL_SVML", "1")

import numba

if numba.config.USING_SVML:  # numba was imported first, on a machine with Intel's SVML
    raise ImportError(
        "parity.kernels: numba is using Intel SVML, whose vectorised log1p may differ in the last bit from the "
        "scalar call and break offline/online parity; set NUMBA_DISABLE_INTEL_SVML=1 in the environment "
        "(or import parity.kernels before numba)"
    )

from parity.kernels.bucketize import bucketize
from parity.kernels.binning import CategoryIndex, NumericBinner, bin_counts
from parity.kernels.clip import clip
from parity.kernels.hashing import stable_hash
from parity.kernels.log import log1p
from parity.kernels.scale import min_max_scale, standard_scale

__all__ = ["CategoryIndex", "NumericBinner", "bin_counts", "bucketize", "clip", "log1p", "min_max_scale", "stable_hash", "standard_scale"]
