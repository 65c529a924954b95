# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Low-level binding of the C++ Coarse2Fine flow. Use pyflow.coarse2fine_flow instead:
this module does no validation beyond what typed memoryviews enforce."""

# Bumped whenever the binding's signature or the core's results change, so that a stale
# build found on the path is reported instead of silently used.
CORE_VERSION = 1

cdef extern from "src/coarse2fine.h" namespace "pyflow":
    cdef cppclass FlowParams:
        double alpha
        double ratio
        int min_width
        int n_outer
        int n_inner
        int n_sor

    void c_coarse2fine_flow "pyflow::coarse2fine_flow"(
        const double* im1, const double* im2, int h, int w, int c, const FlowParams& params,
        double* u, double* v, double* im2w) except + nogil
    const char* c_active_isa "pyflow::active_isa"()
    bint c_select_isa "pyflow::select_isa"(const char* name)


def isa():
    """The instruction set the core runs with: "baseline", "avx2" or "avx512"."""
    return c_active_isa().decode()


def set_isa(str name):
    """Use another instruction set (for tests and benchmarks: all give identical results).

    Returns False, changing nothing, when the CPU or this build does not support it. The
    environment variable PYFLOW_ISA chooses the initial one the same way.
    """
    return c_select_isa(name.encode())


def flow_into(const double[:, :, ::1] im1, const double[:, :, ::1] im2, double alpha,
              double ratio, int minWidth, int nOuterFPIterations, int nInnerFPIterations,
              int nSORIterations, double[:, ::1] u, double[:, ::1] v, double[:, :, ::1] im2W):
    """Compute the flow from im1 to im2 into u, v and im2W, with the GIL released.

    All arrays must be C-contiguous float64 of matching shapes and the parameters valid:
    pyflow.flow checks both before calling this.
    """
    cdef FlowParams params
    params.alpha = alpha
    params.ratio = ratio
    params.min_width = minWidth
    params.n_outer = nOuterFPIterations
    params.n_inner = nInnerFPIterations
    params.n_sor = nSORIterations
    cdef int h = im1.shape[0]
    cdef int w = im1.shape[1]
    cdef int c = im1.shape[2]
    with nogil:
        c_coarse2fine_flow(&im1[0, 0, 0], &im2[0, 0, 0], h, w, c, params,
                           &u[0, 0], &v[0, 0], &im2W[0, 0, 0])
