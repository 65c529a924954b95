// The Coarse2Fine core compiled for AVX2 (x86-64-v3); dispatch.cpp selects it at run time.
//
// The standard headers come first, outside the target region, so that everything they define
// is compiled for the baseline and identical in every translation unit.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

#include "isa.h"

#if PYFLOW_MULTI_ISA
#undef PYFLOW_ISA
#undef PYFLOW_LANES
#define PYFLOW_ISA avx2
#define PYFLOW_LANES 4
#pragma GCC push_options
#pragma GCC target("avx2")
// Unity build: the implementation files, compiled here in namespace pyflow::avx2.
#include "image.cpp"
#include "pyramid.cpp"
#include "sor.cpp"
#include "solver.cpp"
#include "flow.cpp"
#pragma GCC pop_options
#endif
