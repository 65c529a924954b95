#include "sor.h"

#include <algorithm>
#include <cstring>

namespace pyflow {
namespace PYFLOW_ISA {

namespace {

constexpr int B = BandLayout::kBand;
constexpr int F = SorSystem::kFields;

constexpr int kLanes = PYFLOW_LANES;  // doubles per SIMD vector of this ISA
constexpr int kVecs = B / kLanes;
// Bytes of band data the sweeps aim to keep in cache (about half of a small L2).
constexpr std::size_t kCacheBytes = std::size_t{1} << 20;
typedef double vec __attribute__((vector_size(kLanes * sizeof(double))));

inline vec load(const double* p) {
    vec v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store(double* p, vec v) { std::memcpy(p, &v, sizeof v); }
typedef long long lanes __attribute__((vector_size(kLanes * sizeof(long long))));

// x in every lane (an initializer of equal elements compiles to a single broadcast).
inline vec splat(double x) {
#if PYFLOW_LANES == 8
    return vec{x, x, x, x, x, x, x, x};
#elif PYFLOW_LANES == 4
    return vec{x, x, x, x};
#else
    return vec{x, x};
#endif
}

// Lanes moved up by one: [a[last], b[0], ..., b[last - 1]] (a single two-source permute).
#if defined(__clang__)
#define PYFLOW_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define PYFLOW_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, lanes{__VA_ARGS__})
#endif
inline vec shift_in(vec a, vec b) {
#if PYFLOW_LANES == 8
    return PYFLOW_SHUFFLE(a, b, 7, 8, 9, 10, 11, 12, 13, 14);
#elif PYFLOW_LANES == 4
    return PYFLOW_SHUFFLE(a, b, 3, 4, 5, 6);
#else
    return PYFLOW_SHUFFLE(a, b, 1, 2);
#endif
}
#undef PYFLOW_SHUFFLE

// One band's state during a sweep: its cells, those of the band below (null for the last;
// row i0 + B, not yet updated this sweep), and the values just computed, which are the next
// step's left neighbours.
struct Band {
    const double* coef;
    double* du;
    double* dv;
    const double* du_below;
    const double* dv_below;
    vec du_prev[kVecs];
    vec dv_prev[kVecs];
    vec wr_prev[kVecs];  // the previous step's right and lower weights
    vec wd_prev[kVecs];
};

// The upper neighbour of lane 0 at some step: (du, dv) of row i0 - 1, already updated this
// sweep, and the lower weight of that row (0 above the image).
struct Above {
    double du, dv, wd;
};

// Step t of a band: lane r updates (i0 + r, t - r).
inline void band_step(Band& band, int t, Above above, vec neg_alpha, vec keep) {
    const int s = t + 1;
    // Lane B-1's lower neighbour (i0 + B, t - B + 1) is lane 0 of the band below at step
    // t - B + 2 (a padding cell, whose weight is zero anyway, before the first column).
    double du_down = 0, dv_down = 0;
    if (band.du_below) {
        const std::size_t d = static_cast<std::size_t>(std::max(t - B + 2, 0)) * B;
        du_down = band.du_below[d];
        dv_down = band.dv_below[d];
    }
    const double* c = band.coef + static_cast<std::size_t>(s) * F * B;
    double* u = band.du + static_cast<std::size_t>(s) * B;
    double* v = band.dv + static_cast<std::size_t>(s) * B;
    vec du_new[kVecs], dv_new[kVecs], wr_new[kVecs], wd_new[kVecs];
#pragma GCC unroll 8
    for (int k = 0; k < kVecs; k++) {
        const int l = k * kLanes;
        const vec wr = load(c + SorSystem::kWr * B + l), wd = load(c + SorSystem::kWd * B + l);
        const vec wl = band.wr_prev[k];
        const vec wu = shift_in(k == 0 ? splat(above.wd) : band.wd_prev[k - 1], band.wd_prev[k]);
        const vec axy = load(c + SorSystem::kAxy * B + l);
        const vec u_up = shift_in(k == 0 ? splat(above.du) : band.du_prev[k - 1], band.du_prev[k]);
        const vec v_up = shift_in(k == 0 ? splat(above.dv) : band.dv_prev[k - 1], band.dv_prev[k]);
        wr_new[k] = wr;
        wd_new[k] = wd;
        // Lower neighbours: lanes r + 1 of the next step; the last from the band below.
        vec u_down = load(u + B + l + 1), v_down = load(v + B + l + 1);
        if (k == kVecs - 1) {
            u_down[kLanes - 1] = du_down;
            v_down[kLanes - 1] = dv_down;
        }
        // The reference's operations, in its order.
        vec s1 = wl * band.du_prev[k];
        s1 = s1 + wr * load(u + B + l);
        s1 = s1 + wu * u_up;
        s1 = s1 + wd * u_down;
        vec s2 = wl * band.dv_prev[k];
        s2 = s2 + wr * load(v + B + l);
        s2 = s2 + wu * v_up;
        s2 = s2 + wd * v_down;
        s1 = s1 * neg_alpha;
        s2 = s2 * neg_alpha;
        s1 = s1 + axy * load(v + l);
        du_new[k] = keep * load(u + l) +
                    load(c + SorSystem::kIdu * B + l) * (load(c + SorSystem::kRu * B + l) - s1);
        s2 = s2 + axy * du_new[k];
        dv_new[k] = keep * load(v + l) +
                    load(c + SorSystem::kIdv * B + l) * (load(c + SorSystem::kRv * B + l) - s2);
    }
#pragma GCC unroll 8
    for (int k = 0; k < kVecs; k++) {
        store(u + k * kLanes, du_new[k]);
        store(v + k * kLanes, dv_new[k]);
        band.du_prev[k] = du_new[k];
        band.dv_prev[k] = dv_new[k];
        band.wr_prev[k] = wr_new[k];
        band.wd_prev[k] = wd_new[k];
    }
}

}  // namespace

void BandLayout::reset(int width, int height) {
    width_ = width;
    height_ = height;
    bands_ = (height + kBand - 1) / kBand;
}

void BandLayout::unpack(const double* src, double* dst) const {
    for (int i = 0; i < height_; i++) {
        double* row = dst + static_cast<std::size_t>(i) * width_;
        const double* in = src + offset(i, 0);
        for (int j = 0; j < width_; j++) row[j] = in[static_cast<std::size_t>(j) * kBand];
    }
}

void sor_sweeps(const BandLayout& layout, const SorSystem& sys, double alpha, double omega,
                int n_sweeps, double* du, double* dv) {
    const int n_steps = layout.steps(), band_steps = layout.width() + B - 1;
    const std::size_t band_size = static_cast<std::size_t>(n_steps) * B;
    const int n_bands = layout.bands();
    const vec neg_alpha = splat(-alpha), keep = splat(1 - omega);
    auto band = [&](int b) {
        double* u = du + b * band_size;
        double* v = dv + b * band_size;
        const bool below = b < n_bands - 1;
        return Band{sys.coef.data() + b * band_size * F, u, v,
                    below ? u + band_size : nullptr, below ? v + band_size : nullptr,
                    {}, {}, {}, {}};
    };
    // The upper neighbour of lane 0 at step t: lane B-1 of the band above at step t + B
    // (past the last column: padding, weight zero).
    auto above = [&](int b, int t) {
        if (b == 0) return Above{0, 0, 0};
        const std::size_t s = std::min(t + B, n_steps - 1);
        const std::size_t cell = (b - 1) * band_size + s * B + B - 1;
        const std::size_t coef = ((b - 1) * band_size + s * B) * F + SorSystem::kWd * B + B - 1;
        return Above{du[cell], dv[cell], sys.coef[coef]};
    };

    // Sweep k of band b needs sweep k of band b - 1 (its upper neighbours, new values) and
    // sweep k - 1 of band b + 1 (its lower neighbours, old values), and it must come before
    // sweep k of band b + 1 and sweep k + 1 of band b - 1. So "band b, sweep k" can run in
    // the order of b + k, with b descending within one b + k: a wavefront over (band, sweep)
    // that sweeps a block of `depth` consecutive sweeps over a few bands at a time (they stay
    // in cache), and whose items of equal b + k are independent: they run two by two, their
    // steps interleaved, so that their dependency chains overlap.
    const std::size_t band_bytes = band_size * (F + 2) * sizeof(double);
    const int depth = static_cast<int>(std::max<std::size_t>(2, kCacheBytes / band_bytes));
    for (int k0 = 0; k0 < n_sweeps; k0 += depth) {
        const int sweeps = std::min(depth, n_sweeps - k0);
        for (int diag = 0; diag < n_bands + sweeps - 1; diag++) {
            // The bands of this wavefront, in order (sweep k0 + m of band diag - m).
            const int m_first = std::max(0, diag - n_bands + 1), m_end = std::min(sweeps, diag + 1);
            int m = m_first;
            for (; m + 1 < m_end; m += 2) {
                const int b = diag - m;
                Band first = band(b), second = band(b - 1);
                for (int t = 0; t < band_steps; t++) {
                    band_step(first, t, above(b, t), neg_alpha, keep);
                    band_step(second, t, above(b - 1, t), neg_alpha, keep);
                }
            }
            if (m < m_end) {
                const int b = diag - m;
                Band single = band(b);
                for (int t = 0; t < band_steps; t++)
                    band_step(single, t, above(b, t), neg_alpha, keep);
            }
        }
    }
}

}  // namespace PYFLOW_ISA
}  // namespace pyflow
