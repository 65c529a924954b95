#include "solver.h"

#include <algorithm>
#include <cmath>

namespace pyflow {
namespace PYFLOW_ISA {

namespace {

const double kOmega = 1.8;
// The reference's pow(0.001, 2), for both robust functions.
const double kEps = 0.001 * 0.001;

// Ix, Iy, It of the pair (F1, Fw): It = S2 - S1 and the 5-point derivatives of the blend
// 0.4 S1 + 0.6 S2, where S1, S2 are F1, Fw smoothed by kSmooth5 (S1 given). Row by row, so
// that S2 and each blend row are used while in cache.
void derivatives(const Image& s1, const Image& fw, SolverWorkspace& ws) {
    const int w = s1.width, h = s1.height, c = s1.channels;
    for (Image* im : {&ws.tmp, &ws.blend, &ws.it, &ws.ix, &ws.iy}) im->reshape(w, h, c);
    ws.s2.reshape(w, 1, 1);  // one row of S2 at a time
    filter_rows_h(fw.ptr(), ws.tmp.ptr(), w, h * c, 1, kSmooth5, 2);
    double* __restrict s2 = ws.s2.ptr();
    for (int k = 0; k < c; k++)
        for (int i = 0; i < h; i++) {
            const std::size_t row = k * s1.npixels() + static_cast<std::size_t>(i) * w;
            filter_row_v<2>(ws.tmp.plane(k), s2, w, i, h, kSmooth5);
            const double* __restrict a = s1.ptr() + row;
            double* __restrict blend = ws.blend.ptr() + row;
            double* __restrict it = ws.it.ptr() + row;
            for (int j = 0; j < w; j++) {
                blend[j] = a[j] * 0.4 + s2[j] * 0.6;
                it[j] = s2[j] - a[j];
            }
            filter_row_h<2>(blend, ws.ix.ptr() + row, w, 1, kDeriv5);
        }
    for (int k = 0; k < c; k++) filter_rows_v(ws.blend.plane(k), ws.iy.plane(k), w, h, kDeriv5, 2);
}

// phi = 0.5 / sqrt(ux^2 + uy^2 + vx^2 + vy^2 + eps) with forward differences of (uu, vv),
// which are 0 in the last column / row.
void smoothness_weights(const double* uu, const double* vv, int w, int h, double* phi) {
    for (int i = 0; i < h; i++) {
        const std::size_t row = static_cast<std::size_t>(i) * w;
        const std::size_t down = i < h - 1 ? w : 0;  // the last row's y-differences are 0
        const double* __restrict u0 = uu + row;
        const double* __restrict v0 = vv + row;
        double* __restrict out = phi + row;
        for (int j = 0; j < w - 1; j++) {
            const double ux = u0[j + 1] - u0[j], uy = u0[j + down] - u0[j];
            const double vx = v0[j + 1] - v0[j], vy = v0[j + down] - v0[j];
            out[j] = 0.5 / std::sqrt(ux * ux + uy * uy + vx * vx + vy * vy + kEps);
        }
        const int j = w - 1;
        const double uy = u0[j + down] - u0[j], vy = v0[j + down] - v0[j];
        out[j] = 0.5 / std::sqrt(0.0 * 0.0 + uy * uy + 0.0 * 0.0 + vy * vy + kEps);
    }
}

// Adds one channel's psi Ix Iy, psi Ix^2, psi Iy^2, psi Ix It, psi Iy It to the sums, where
// psi = 1 / (2 sqrt((It + Ix du + Iy dv)^2 + eps)).
void add_data_terms(int n, const double* __restrict Ix, const double* __restrict Iy,
                    const double* __restrict It, const double* __restrict du,
                    const double* __restrict dv, double* __restrict axy, double* __restrict axx,
                    double* __restrict ayy, double* __restrict bx, double* __restrict by) {
    for (int p = 0; p < n; p++) {
        double t = It[p] + Ix[p] * du[p] + Iy[p] * dv[p];
        t *= t;
        const double psi = 1 / (2 * std::sqrt(t + kEps));
        const double px = psi * Ix[p], py = psi * Iy[p];
        axy[p] += px * Iy[p];
        axx[p] += px * Ix[p];
        ayy[p] += py * Iy[p];
        bx[p] += px * It[p];
        by[p] += py * It[p];
    }
}

// Row i of the weighted Laplacian of x: L = -h[p] + h[p-1] - g[p] + g[p-w] with h = phi times
// the forward x-difference and g = phi times the forward y-difference, missing terms skipped
// (the reference's order; a skipped term and an added exact zero give the same value).
void laplacian_row(const double* x, const double* phi, int w, int h, int i,
                   double* __restrict L) {
    const std::size_t row = static_cast<std::size_t>(i) * w;
    const double* x0 = x + row;
    const double* p0 = phi + row;
    for (int j = 1; j < w - 1; j++)
        L[j] = -((x0[j + 1] - x0[j]) * p0[j]) + (x0[j] - x0[j - 1]) * p0[j - 1];
    if (w > 1) {
        L[0] = -((x0[1] - x0[0]) * p0[0]);
        L[w - 1] = 0 + (x0[w - 1] - x0[w - 2]) * p0[w - 2];
    } else {
        L[0] = 0;
    }
    if (i < h - 1)
        for (int j = 0; j < w; j++) L[j] -= (x0[j + w] - x0[j]) * p0[j];
    if (i > 0)
        for (int j = 0; j < w; j++) L[j] += (x0[j] - x0[j - w]) * p0[j - w];
}

// The SOR system in band layout, row by row (padding cells were zeroed when the level
// started): the channel means of the data terms (the reference's "collapse": sum in channel
// order, then divide by the channel count), the weighted Laplacians of u and v, and from
// them the coefficients of each pixel.
void build_system(SolverWorkspace& ws, const double* u, const double* v, int w, int h, int c,
                  double alpha) {
    constexpr int B = BandLayout::kBand;
    constexpr int F = SorSystem::kFields;
    enum Row { kAxy, kAxx, kAyy, kBx, kBy, kLu, kLv, kWr, kWd, kRu, kRv, kIdu, kIdv, kRows };
    ws.rows.resize(static_cast<std::size_t>(kRows) * w);
    double* r[kRows];
    for (int q = 0; q < kRows; q++) r[q] = ws.rows.data() + static_cast<std::size_t>(q) * w;
    const double* phi = ws.phi.data();
    for (int i = 0; i < h; i++) {
        const std::size_t row = static_cast<std::size_t>(i) * w;
        std::fill(r[kAxy], r[kBy] + w, 0.0);
        for (int k = 0; k < c; k++) {
            // A channel switched off by the noise estimate has psi = 0: it adds exact zeros.
            if (!ws.active[k]) continue;
            add_data_terms(w, ws.ix.plane(k) + row, ws.iy.plane(k) + row, ws.it.plane(k) + row,
                           ws.du.data() + row, ws.dv.data() + row, r[kAxy], r[kAxx], r[kAyy],
                           r[kBx], r[kBy]);
        }
        for (double* p = r[kAxy]; p < r[kBy] + w; p++) *p /= c;
        laplacian_row(u, phi, w, h, i, r[kLu]);
        laplacian_row(v, phi, w, h, i, r[kLv]);
        // Neighbour weights: phi of the left / upper neighbour, phi here for the right / lower
        // one, 0 where there is none; coeff = alpha * (wl + wr + wu + wd) in that order.
        const double* p0 = phi + row;
        const double* up = i > 0 ? p0 - w : nullptr;
        const bool down = i < h - 1;
        for (int j = 0; j < w; j++) {
            const double wl = j > 0 ? p0[j - 1] : 0.0;
            const double wr = j < w - 1 ? p0[j] : 0.0;
            const double wu = up ? up[j] : 0.0;
            const double wd = down ? p0[j] : 0.0;
            const double coeff = alpha * (wl + wr + wu + wd);
            r[kWr][j] = wr;
            r[kWd][j] = wd;
            r[kRu][j] = -r[kBx][j] - alpha * r[kLu][j];
            r[kRv][j] = -r[kBy][j] - alpha * r[kLv][j];
            r[kIdu][j] = kOmega / (r[kAxx][j] + alpha * 0.05 + coeff);
            r[kIdv][j] = kOmega / (r[kAyy][j] + alpha * 0.05 + coeff);
        }
        // Consecutive columns of a row are consecutive steps, one coefficient block apart.
        double* out = ws.sys.coef.data() + ws.layout.step(i, 0) * F * B + i % B;
        const double* fields[F];
        fields[SorSystem::kWr] = r[kWr];
        fields[SorSystem::kWd] = r[kWd];
        fields[SorSystem::kAxy] = r[kAxy];
        fields[SorSystem::kRu] = r[kRu];
        fields[SorSystem::kRv] = r[kRv];
        fields[SorSystem::kIdu] = r[kIdu];
        fields[SorSystem::kIdv] = r[kIdv];
        for (int j = 0; j < w; j++, out += F * B)
            for (int f = 0; f < F; f++) out[f * B] = fields[f][j];
    }
}

// The reference's noise estimate: per channel, the mean of |F1 - Fw| over the pixels where it
// is in (0, 1e6), summed in pixel order (0.001 when there are none). Only "mean < 1e-20"
// matters (it switches the channel off). A sum of N positive terms is at least its largest
// term times (1 - N 2^-53) whatever the rounding, so one valid term of at least
// n 1.01e-20 (n >= N pixels) settles it; only otherwise is the in-order sum computed. The
// counts are exact in any order, so that first loop vectorises.
bool channel_active(const double* __restrict a, const double* __restrict b, std::size_t n) {
    const double big = static_cast<double>(n) * 1.01e-20;
    std::size_t valid = 0, large = 0;
    for (std::size_t p = 0; p < n; p++) {
        const double d = std::fabs(a[p] - b[p]);
        valid += (d > 0) & (d < 1000000);
        large += (d >= big) & (d < 1000000);
    }
    if (valid == 0 || large > 0) return true;  // no valid term: the reference uses 0.001
    double sum = 0;
    for (std::size_t p = 0; p < n; p++) {
        const double d = std::fabs(a[p] - b[p]);
        if (d > 0 && d < 1000000) sum += d;
    }
    return !(sum / static_cast<double>(valid) < 1e-20);
}

void estimate_noise(const Image& f1, const Image& fw, std::vector<char>& active) {
    for (int k = 0; k < f1.channels; k++)
        active[k] = channel_active(f1.plane(k), fw.plane(k), f1.npixels());
}

}  // namespace

void solve_level(const Image& f1, const Image& f2, Image& warped, double* u, double* v,
                 const SolverParams& prm, SolverWorkspace& ws) {
    const int w = f1.width, h = f1.height, c = f1.channels;
    const std::size_t n = f1.npixels();
    const double alpha = prm.alpha;
    for (auto* buf : {&ws.du, &ws.dv, &ws.uu, &ws.vv, &ws.phi}) buf->resize(n);
    ws.layout.reset(w, h);
    ws.sys.reset(ws.layout);
    // One step more than the cells: the last step's vector loads of "the next step, one lane
    // on" reach one value past the last band (and then replace it).
    ws.du_band.resize(ws.layout.cells() + BandLayout::kBand);
    ws.dv_band.resize(ws.layout.cells() + BandLayout::kBand);
    double* du = ws.du.data();
    double* dv = ws.dv.data();

    // F1 does not change during the level: smooth it once.
    filter_hv_planar(f1, ws.s1, kSmooth5, 2, ws.tmp);

    for (int outer = 0; outer < prm.n_outer; outer++) {
        derivatives(ws.s1, warped, ws);
        std::fill(du, du + n, 0.0);
        std::fill(dv, dv + n, 0.0);
        for (int inner = 0; inner < prm.n_inner; inner++) {
            const double* uu = u;
            const double* vv = v;
            if (inner > 0) {
                for (std::size_t p = 0; p < n; p++) {
                    ws.uu[p] = u[p] + du[p];
                    ws.vv[p] = v[p] + dv[p];
                }
                uu = ws.uu.data();
                vv = ws.vv.data();
            }
            smoothness_weights(uu, vv, w, h, ws.phi.data());
            build_system(ws, u, v, w, h, c, alpha);
            std::fill(ws.du_band.begin(), ws.du_band.end(), 0.0);
            std::fill(ws.dv_band.begin(), ws.dv_band.end(), 0.0);
            sor_sweeps(ws.layout, ws.sys, alpha, kOmega, prm.n_sor, ws.du_band.data(),
                       ws.dv_band.data());
            ws.layout.unpack(ws.du_band.data(), du);
            ws.layout.unpack(ws.dv_band.data(), dv);
        }
        for (std::size_t p = 0; p < n; p++) {
            u[p] += du[p];
            v[p] += dv[p];
        }
        warp_bilinear(f1, f2, u, v, warped);
        estimate_noise(f1, warped, ws.active);
    }
}

}  // namespace PYFLOW_ISA
}  // namespace pyflow
