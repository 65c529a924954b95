"""Coarse2Fine optical flow for iSeeBetter: a faithful re-implementation of ``pyflow``.

``pyflow.coarse2fine_flow(im1, im2, ...)`` computes the same dense flow as pyflow (C. Liu's
variational Coarse2Fine flow), silently, with input validation, and with the GIL released so
that several flows can run in parallel threads; ``pyflow.coarse2fine_flows`` does exactly that
for one frame and its neighbours. Build the C++ extension with ``pip install ./pyflow`` (or,
in place, ``cd pyflow && python setup.py build_ext -i``).
"""

import pkgutil

# The source folder is found first when running from the repository root; extend the package
# path so that an extension installed into site-packages by `pip install ./pyflow` is found too.
__path__ = pkgutil.extend_path(__path__, __name__)

__all__ = ["ISEEBETTER_PARAMS", "PYFLOW_DEFAULTS", "coarse2fine_flow", "coarse2fine_flows"]

# The parameters iSeeBetter (and RBPN) call pyflow with, on uint8 frames divided by 255.
ISEEBETTER_PARAMS = dict(alpha=0.012, ratio=0.75, minWidth=20, nOuterFPIterations=7,
                         nInnerFPIterations=1, nSORIterations=30, colType=0)
# pyflow's own defaults (the keyword defaults of coarse2fine_flow).
PYFLOW_DEFAULTS = dict(alpha=1.0, ratio=0.5, minWidth=40, nOuterFPIterations=3,
                       nInnerFPIterations=1, nSORIterations=20, colType=0)

_BUILD_HINT = ("pyflow's C++ extension is not built ({reason}). Build it from the repository "
               "root with `pip install ./pyflow`, or in place with "
               "`cd pyflow && python setup.py build_ext -i`.")

try:
    from .flow import coarse2fine_flow, coarse2fine_flows
except ImportError as _err:  # the extension is missing, stale or built for another Python
    if getattr(_err, "name", None) not in (None, "pyflow._pyflow"):
        raise
    _BUILD_ERROR = _err

    def __getattr__(name: str):
        if name in ("coarse2fine_flow", "coarse2fine_flows"):
            raise ImportError(_BUILD_HINT.format(reason=_BUILD_ERROR)) from _BUILD_ERROR
        raise AttributeError(f"module 'pyflow' has no attribute {name!r}")
