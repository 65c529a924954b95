// Image primitives of the Coarse2Fine flow, with clamped borders. Every routine performs, for
// each output value, the reference's operations in the reference's order, so that results
// match it bit for bit; loops are arranged (and vectorised) freely around that.
#pragma once

#include "buffer.h"
#include "isa.h"

#include <cstddef>
#include <vector>

namespace pyflow {
namespace PYFLOW_ISA {

// An owning H x W x C image of doubles. Interleaved (H x W x C, the input and pyramid format)
// or planar (C planes of H x W, the solver's format), as the user of each one states.
struct Image {
    int width = 0;
    int height = 0;
    int channels = 0;
    Buffer data;

    // Resizes; values are left as they are (callers overwrite them). Capacity only grows.
    void reshape(int w, int h, int c) {
        width = w;
        height = h;
        channels = c;
        data.resize(static_cast<std::size_t>(w) * h * c);
    }
    std::size_t npixels() const { return static_cast<std::size_t>(width) * height; }
    std::size_t size() const { return data.size(); }
    double* ptr() { return data.data(); }
    const double* ptr() const { return data.data(); }
    double* plane(int k) { return data.data() + k * npixels(); }
    const double* plane(int k) const { return data.data() + k * npixels(); }
};

inline int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// 1-D filtering with clamped borders: out[j] = sum over l = -r..r of f[l + r] * in[j + l],
// accumulated from 0 in the order of l (zero taps included, as in the reference).

// One row of a horizontal pass: `width` pixels of `c` interleaved values.
template <int R>
void filter_row_h(const double* src, double* __restrict dst, int width, int c, const double* f) {
    const int lo = width < R ? width : R;
    const int hi = width - R > lo ? width - R : lo;
    // The borders [0, lo) and [hi, width) with clamped indices; the interior below without.
    auto border = [&](int j) {
        for (int k = 0; k < c; k++) {
            double acc = 0;
            for (int l = -R; l <= R; l++) acc += src[clamp_index(j + l, width) * c + k] * f[l + R];
            dst[j * c + k] = acc;
        }
    };
    for (int j = 0; j < lo; j++) border(j);
    for (int j = hi; j < width; j++) border(j);
    const std::size_t end = static_cast<std::size_t>(hi) * c;
    for (std::size_t t = static_cast<std::size_t>(lo) * c; t < end; t++) {
        double acc = 0;
        for (int l = 0; l <= 2 * R; l++) acc += src[t + (l - R) * c] * f[l];
        dst[t] = acc;
    }
}

// Output row i of a vertical pass over `height` rows of `len` values.
template <int R>
void filter_row_v(const double* in, double* __restrict dst, std::size_t len, int i, int height,
                  const double* f) {
    const double* rows[2 * R + 1];
    for (int l = 0; l <= 2 * R; l++) rows[l] = in + clamp_index(i + l - R, height) * len;
    for (std::size_t t = 0; t < len; t++) {
        double acc = 0;
        for (int l = 0; l <= 2 * R; l++) acc += rows[l][t] * f[l];
        dst[t] = acc;
    }
}

// Whole images: `rows` rows of `width` pixels of `channels` values; `height` rows of `row_len`.
void filter_rows_h(const double* in, double* out, int width, int rows, int channels,
                   const double* f, int r);
void filter_rows_v(const double* in, double* out, int row_len, int height, const double* f,
                   int r);
// Horizontal then vertical pass: on an interleaved image, or on each plane of a planar one.
// `tmp` is scratch.
void filter_hv(const Image& in, Image& out, const double* f, int r, Image& tmp);
void filter_hv_planar(const Image& in, Image& out, const double* f, int r, Image& tmp);

// Gaussian taps exp(-i^2 / (2 sigma^2)), i = -r..r, normalised to sum 1.
std::vector<double> gaussian_taps(double sigma, int r);

// The reference's fixed filters: the solver's pre-smoothing, the 5-point derivative
// [1, -8, 0, 8, -1] / 12, and the central difference of the bicubic warp.
constexpr double kSmooth5[5] = {0.02, 0.11, 0.74, 0.11, 0.02};
constexpr double kDeriv5[5] = {1.0 / 12, -8.0 / 12, 0.0, 8.0 / 12, -1.0 / 12};
constexpr double kCentral3[3] = {-0.5, 0.0, 0.5};

// Bilinear resize of an interleaved image: by a ratio (to int(W r) x int(H r)) or to a size.
void resize_by_ratio(const Image& in, Image& out, double ratio);
void resize_to(const Image& in, Image& out, int width, int height);

// Planar: out = F2 sampled bilinearly at (j + u, i + v); F1's own pixel where that leaves
// the image.
void warp_bilinear(const Image& f1, const Image& f2, const double* u, const double* v,
                   Image& out);

// Interleaved: im2 warped by (u, v) with bicubic Hermite patches, im1 outside the image,
// clamped to [0, 1].
void warp_bicubic(const Image& im1, const Image& im2, const double* u, const double* v,
                  double* out);

// Planar feature image of an interleaved one: RGB -> [grey, d/dx grey, d/dy grey, G - R,
// G - B]; grey -> [I, dI/dx, dI/dy].
void features(const Image& im, Image& out);

}  // namespace PYFLOW_ISA
}  // namespace pyflow
