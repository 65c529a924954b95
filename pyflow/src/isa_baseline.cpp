// The Coarse2Fine core compiled for any CPU of the platform (SSE2 on x86-64, NEON on arm64);
// dispatch.cpp uses it where no wider variant applies.
#include "isa.h"

// Unity build: the implementation files, compiled here in namespace pyflow::baseline.
#include "image.cpp"
#include "pyramid.cpp"
#include "sor.cpp"
#include "solver.cpp"
#include "flow.cpp"
