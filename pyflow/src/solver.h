// One pyramid level of the Coarse2Fine flow: Brox et al. warping with iteratively reweighted
// least squares (outer/inner fixed-point iterations) and SOR (C. Liu, Beyond Pixels, app. A).
#pragma once

#include "isa.h"

#include <vector>

#include "image.h"
#include "sor.h"

namespace pyflow {
namespace PYFLOW_ISA {

struct SolverParams {
    double alpha;
    int n_outer;
    int n_inner;
    int n_sor;
};

// Scratch buffers of the solver, kept across levels so that allocations happen once per flow.
struct SolverWorkspace {
    Image s1, s2, blend, ix, iy, it, tmp;  // planar; s2 holds one row
    Buffer du, dv, uu, vv, phi, rows;
    BandLayout layout;
    SorSystem sys;
    Buffer du_band, dv_band;
    // Per channel, whether the reference's robust-noise estimate (its "Laplacian noise" model)
    // is at least 1e-20; psi is 0 for the other channels. Carried across levels, as in the
    // reference (which starts from 0.02).
    std::vector<char> active;

    // Doubles allocated (capacity) by all the buffers.
    std::size_t capacity() const {
        std::size_t total = sys.coef.capacity();
        for (const Image* im : {&s1, &s2, &blend, &ix, &iy, &it, &tmp})
            total += im->data.capacity();
        for (const auto* v : {&du, &dv, &uu, &vv, &phi, &rows, &du_band, &dv_band})
            total += v->capacity();
        return total;
    }
};

// Refines u, v (in place) on one level, for the planar feature images f1, f2; `warped` holds
// warp(f1, f2, u, v) on entry and on exit.
void solve_level(const Image& f1, const Image& f2, Image& warped, double* u, double* v,
                 const SolverParams& p, SolverWorkspace& ws);

}  // namespace PYFLOW_ISA
}  // namespace pyflow
