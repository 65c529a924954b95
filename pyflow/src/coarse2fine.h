// Coarse2Fine optical flow (C. Liu's variational flow, as wrapped by pyflow).
#pragma once

namespace pyflow {

struct FlowParams {
    double alpha = 1.0;
    double ratio = 0.5;
    int min_width = 40;
    int n_outer = 3;
    int n_inner = 1;
    int n_sor = 20;
};

// Flow from im1 to im2 (both H x W x C, C = 3 for RGB or 1 for grey, row-major doubles).
// Writes u, v (H x W) and im2 warped towards im1 (H x W x C). Inputs must be validated by the
// caller (h, w >= 2, finite values, alpha > 0, min_width >= 1, counts >= 0). Throws
// std::bad_alloc when memory runs out; touches no Python state (safe without the GIL).
void coarse2fine_flow(const double* im1, const double* im2, int h, int w, int c,
                      const FlowParams& params, double* u, double* v, double* im2w);

// The instruction set coarse2fine_flow uses: "baseline", "avx2" or "avx512". The best one the
// CPU supports, unless the environment variable PYFLOW_ISA names another (for testing).
const char* active_isa();
// Switches to the named instruction set if the CPU (and this build) supports it; returns
// whether it did. All of them compute identical results.
bool select_isa(const char* name);

// The per-ISA cores (flow.cpp compiled by isa_*.cpp); use coarse2fine_flow.
using FlowFunction = void(const double*, const double*, int, int, int, const FlowParams&,
                          double*, double*, double*);
namespace baseline { FlowFunction coarse2fine_flow; }
namespace avx2 { FlowFunction coarse2fine_flow; }
namespace avx512 { FlowFunction coarse2fine_flow; }

}  // namespace pyflow
