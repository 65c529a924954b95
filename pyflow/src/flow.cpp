#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

#include "coarse2fine.h"
#include "image.h"
#include "pyramid.h"
#include "solver.h"

namespace pyflow {
namespace PYFLOW_ISA {

namespace {

// Every buffer of one flow. One per thread is kept between calls: fresh memory costs a page
// fault per 4 KiB on first touch, a large share of a small flow's time.
struct FlowWorkspace {
    std::vector<Image> pyr1, pyr2;  // level 0 holds the input images
    Image f1, f2, warped, u, v, u_prev, v_prev, smoothed, tmp;
    SolverWorkspace solver;

    std::size_t bytes() const {
        std::size_t total = 0;
        for (const auto* pyr : {&pyr1, &pyr2})
            for (const Image& im : *pyr) total += im.data.capacity();
        for (const Image* im : {&f1, &f2, &warped, &u, &v, &u_prev, &v_prev, &smoothed, &tmp})
            total += im->data.capacity();
        return (total + solver.capacity()) * sizeof(double);
    }
};

// Workspaces above this size are released after the call rather than kept for the next.
constexpr std::size_t kKeepBytes = std::size_t{64} << 20;

thread_local std::unique_ptr<FlowWorkspace> t_workspace;

void load_image(const double* src, int w, int h, int c, Image& dst) {
    dst.reshape(w, h, c);
    std::copy(src, src + dst.size(), dst.ptr());
}

void compute(const double* im1, const double* im2, int h, int w, int c,
             const FlowParams& params, double* u_out, double* v_out, double* im2w,
             FlowWorkspace& ws) {
    const double ratio = effective_ratio(params.ratio);
    const int n_levels = pyramid_levels(w, h, ratio, params.min_width);
    for (auto* pyr : {&ws.pyr1, &ws.pyr2})
        if (static_cast<int>(pyr->size()) < n_levels) pyr->resize(n_levels);
    load_image(im1, w, h, c, ws.pyr1[0]);
    load_image(im2, w, h, c, ws.pyr2[0]);
    build_pyramid(ws.pyr1, ratio, n_levels, ws.smoothed, ws.tmp);
    build_pyramid(ws.pyr2, ratio, n_levels, ws.smoothed, ws.tmp);

    ws.solver.active.assign(c == 3 ? 5 : 3, 1);
    Image &f1 = ws.f1, &f2 = ws.f2, &warped = ws.warped, &u = ws.u, &v = ws.v;
    for (int k = n_levels - 1; k >= 0; k--) {
        features(ws.pyr1[k], f1);
        features(ws.pyr2[k], f2);
        const int lw = f1.width, lh = f1.height;
        if (k == n_levels - 1) {
            u.reshape(lw, lh, 1);
            v.reshape(lw, lh, 1);
            std::fill(u.data.begin(), u.data.end(), 0.0);
            std::fill(v.data.begin(), v.data.end(), 0.0);
            warped.reshape(lw, lh, f2.channels);
            std::copy(f2.data.begin(), f2.data.end(), warped.data.begin());
        } else {
            std::swap(u, ws.u_prev);
            std::swap(v, ws.v_prev);
            resize_to(ws.u_prev, u, lw, lh);
            resize_to(ws.v_prev, v, lw, lh);
            const double scale = 1 / ratio;
            for (double& x : u.data) x *= scale;
            for (double& x : v.data) x *= scale;
            warp_bilinear(f1, f2, u.ptr(), v.ptr(), warped);
        }
        const SolverParams sp{params.alpha, params.n_outer + k, params.n_inner,
                              params.n_sor + 3 * k};
        solve_level(f1, f2, warped, u.ptr(), v.ptr(), sp, ws.solver);
    }
    std::copy(u.data.begin(), u.data.end(), u_out);
    std::copy(v.data.begin(), v.data.end(), v_out);
    warp_bicubic(ws.pyr1[0], ws.pyr2[0], u.ptr(), v.ptr(), im2w);
}

}  // namespace

void coarse2fine_flow(const double* im1, const double* im2, int h, int w, int c,
                      const FlowParams& params, double* u, double* v, double* im2w) {
    if (!t_workspace) t_workspace = std::make_unique<FlowWorkspace>();
    compute(im1, im2, h, w, c, params, u, v, im2w, *t_workspace);
    if (t_workspace->bytes() > kKeepBytes) t_workspace.reset();
}

}  // namespace PYFLOW_ISA
}  // namespace pyflow
