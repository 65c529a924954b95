#include "image.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace pyflow {
namespace PYFLOW_ISA {

namespace {

template <int R>
void rows_h(const double* in, double* out, int width, int rows, int c, const double* f) {
    const std::size_t len = static_cast<std::size_t>(width) * c;
    for (int i = 0; i < rows; i++) filter_row_h<R>(in + i * len, out + i * len, width, c, f);
}

template <int R>
void rows_v(const double* in, double* out, int row_len, int height, const double* f) {
    for (int i = 0; i < height; i++)
        filter_row_v<R>(in, out + static_cast<std::size_t>(i) * row_len, row_len, i, height, f);
}

// Bilinear sample at (x, y) in the reference's order of accumulation: (x0, y0), (x0, y0 + 1),
// (x0 + 1, y0), (x0 + 1, y0 + 1), from 0. Gives the four offsets and weights.
struct Bilinear {
    std::size_t o[4];
    double s[4];
    Bilinear(int w, int h, double x, double y) {
        const int x0 = static_cast<int>(x), y0 = static_cast<int>(y);
        const double fx = std::max(std::min(x - x0, 1.0), 0.0);
        const double fy = std::max(std::min(y - y0, 1.0), 0.0);
        const std::size_t xa = clamp_index(x0, w), xb = clamp_index(x0 + 1, w);
        const std::size_t ya = clamp_index(y0, h), yb = clamp_index(y0 + 1, h);
        o[0] = ya * w + xa;
        o[1] = yb * w + xa;
        o[2] = ya * w + xb;
        o[3] = yb * w + xb;
        s[0] = (1 - fx) * (1 - fy);
        s[1] = (1 - fx) * fy;
        s[2] = fx * (1 - fy);
        s[3] = fx * fy;
    }
    // Interleaved image with c channels at pixel offsets o * c.
    double sample(const double* img, int c, int k) const {
        double acc = 0;
        for (int q = 0; q < 4; q++) acc += img[o[q] * c + k] * s[q];
        return acc;
    }
};

void resize_with(const Image& in, Image& out, int dw, int dh, double rx, double ry) {
    const int c = in.channels;
    out.reshape(dw, dh, c);
    for (int i = 0; i < dh; i++) {
        const double y = static_cast<double>(i + 1) / ry - 1;
        for (int j = 0; j < dw; j++) {
            const double x = static_cast<double>(j + 1) / rx - 1;
            const Bilinear b(in.width, in.height, x, y);
            double* dst = out.ptr() + (static_cast<std::size_t>(i) * dw + j) * c;
            for (int k = 0; k < c; k++) dst[k] = b.sample(in.ptr(), c, k);
        }
    }
}

template <int C>
void warp_planar(const Image& f1, const Image& f2, const double* u, const double* v,
                 Image& out) {
    const int w = f2.width, h = f2.height;
    const std::size_t n = f2.npixels();
    out.reshape(w, h, C);
    const double* src1 = f1.ptr();
    const double* src2 = f2.ptr();
    double* dst = out.ptr();
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++) {
            const std::size_t p = static_cast<std::size_t>(i) * w + j;
            const double x = j + u[p], y = i + v[p];
            // Written as a negated range test so that a NaN also counts as outside.
            if (!(x >= 0 && x <= w - 1 && y >= 0 && y <= h - 1)) {
                for (int k = 0; k < C; k++) dst[k * n + p] = src1[k * n + p];
                continue;
            }
            const Bilinear b(w, h, x, y);
            for (int k = 0; k < C; k++) {
                const double* plane = src2 + k * n;
                double acc = 0;
                for (int q = 0; q < 4; q++) acc += plane[b.o[q]] * b.s[q];
                dst[k * n + p] = acc;
            }
        }
}

}  // namespace

// Radii in use: 1 and 2 (the fixed filters) and int(3 sigma) for the pyramid's Gaussians, with
// sigma = (1/ratio - 1) i for i <= int(log(0.25) / log(ratio)); over the ratios the pyramid
// accepts, [0.4, 0.98], sigma is largest, 2, at ratio 0.5. So r <= 6.
void filter_rows_h(const double* in, double* out, int width, int rows, int channels,
                   const double* f, int r) {
    switch (r) {
        case 0: return rows_h<0>(in, out, width, rows, channels, f);
        case 1: return rows_h<1>(in, out, width, rows, channels, f);
        case 2: return rows_h<2>(in, out, width, rows, channels, f);
        case 3: return rows_h<3>(in, out, width, rows, channels, f);
        case 4: return rows_h<4>(in, out, width, rows, channels, f);
        case 5: return rows_h<5>(in, out, width, rows, channels, f);
        case 6: return rows_h<6>(in, out, width, rows, channels, f);
        default: throw std::logic_error("pyflow: filter radius above 6");
    }
}

void filter_rows_v(const double* in, double* out, int row_len, int height, const double* f,
                   int r) {
    switch (r) {
        case 0: return rows_v<0>(in, out, row_len, height, f);
        case 1: return rows_v<1>(in, out, row_len, height, f);
        case 2: return rows_v<2>(in, out, row_len, height, f);
        case 3: return rows_v<3>(in, out, row_len, height, f);
        case 4: return rows_v<4>(in, out, row_len, height, f);
        case 5: return rows_v<5>(in, out, row_len, height, f);
        case 6: return rows_v<6>(in, out, row_len, height, f);
        default: throw std::logic_error("pyflow: filter radius above 6");
    }
}

void filter_hv(const Image& in, Image& out, const double* f, int r, Image& tmp) {
    tmp.reshape(in.width, in.height, in.channels);
    out.reshape(in.width, in.height, in.channels);
    filter_rows_h(in.ptr(), tmp.ptr(), in.width, in.height, in.channels, f, r);
    filter_rows_v(tmp.ptr(), out.ptr(), in.width * in.channels, in.height, f, r);
}

void filter_hv_planar(const Image& in, Image& out, const double* f, int r, Image& tmp) {
    tmp.reshape(in.width, in.height, in.channels);
    out.reshape(in.width, in.height, in.channels);
    filter_rows_h(in.ptr(), tmp.ptr(), in.width, in.height * in.channels, 1, f, r);
    for (int k = 0; k < in.channels; k++)
        filter_rows_v(tmp.plane(k), out.plane(k), in.width, in.height, f, r);
}

std::vector<double> gaussian_taps(double sigma, int r) {
    std::vector<double> taps(2 * r + 1);
    const double two_sigma2 = sigma * sigma * 2;
    double sum = 0;
    for (int i = -r; i <= r; i++) {
        taps[i + r] = std::exp(-static_cast<double>(i * i) / two_sigma2);
        sum += taps[i + r];
    }
    for (double& t : taps) t /= sum;
    return taps;
}

void resize_by_ratio(const Image& in, Image& out, double ratio) {
    const int dw = static_cast<int>(static_cast<double>(in.width) * ratio);
    const int dh = static_cast<int>(static_cast<double>(in.height) * ratio);
    resize_with(in, out, dw, dh, ratio, ratio);
}

void resize_to(const Image& in, Image& out, int width, int height) {
    resize_with(in, out, width, height, static_cast<double>(width) / in.width,
                static_cast<double>(height) / in.height);
}

void warp_bilinear(const Image& f1, const Image& f2, const double* u, const double* v,
                   Image& out) {
    if (f2.channels == 5) return warp_planar<5>(f1, f2, u, v, out);
    return warp_planar<3>(f1, f2, u, v, out);
}

void warp_bicubic(const Image& im1, const Image& im2, const double* u, const double* v,
                  double* out) {
    const int w = im2.width, h = im2.height, c = im2.channels;
    // Slopes of the Hermite patches: central differences in x, y, and y of x.
    Image dx, dy, dxy;
    for (Image* im : {&dx, &dy, &dxy}) im->reshape(w, h, c);
    filter_rows_h(im2.ptr(), dx.ptr(), w, h, c, kCentral3, 1);
    filter_rows_v(im2.ptr(), dy.ptr(), w * c, h, kCentral3, 1);
    filter_rows_v(dx.ptr(), dxy.ptr(), w * c, h, kCentral3, 1);
    const double* planes[4] = {im2.ptr(), dy.ptr(), dx.ptr(), dxy.ptr()};
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++) {
            const std::size_t p = static_cast<std::size_t>(i) * w + j;
            const double x = j + u[p], y = i + v[p];
            double* dst = out + p * c;
            if (!(x >= 0 && x <= w - 1 && y >= 0 && y <= h - 1)) {
                std::copy(im1.ptr() + p * c, im1.ptr() + (p + 1) * c, dst);
                continue;
            }
            const int x0 = static_cast<int>(x), y0 = static_cast<int>(y);
            const int x1 = clamp_index(x0 + 1, w), y1 = clamp_index(y0 + 1, h);
            const double tx = x - x0, ty = y - y0;
            // Cubic Hermite basis: value at 0, value at 1, slope at 0, slope at 1.
            const double tx2 = tx * tx, tx3 = tx2 * tx, ty2 = ty * ty, ty3 = ty2 * ty;
            const double hx[4] = {1 - 3 * tx2 + 2 * tx3, 3 * tx2 - 2 * tx3, tx - 2 * tx2 + tx3,
                                  tx3 - tx2};
            const double hy[4] = {1 - 3 * ty2 + 2 * ty3, 3 * ty2 - 2 * ty3, ty - 2 * ty2 + ty3,
                                  ty3 - ty2};
            const std::size_t o00 = (static_cast<std::size_t>(y0) * w + x0) * c;
            const std::size_t o10 = (static_cast<std::size_t>(y0) * w + x1) * c;
            const std::size_t o01 = (static_cast<std::size_t>(y1) * w + x0) * c;
            const std::size_t o11 = (static_cast<std::size_t>(y1) * w + x1) * c;
            for (int k = 0; k < c; k++) {
                // planes[2a + b]: a = 0 values / 1 x-slopes, b = 0 values / 1 y-slopes.
                double val = 0;
                for (int a = 0; a < 2; a++)
                    for (int b = 0; b < 2; b++) {
                        const double* pl = planes[2 * a + b];
                        val += hx[2 * a] * (hy[2 * b] * pl[o00 + k] + hy[2 * b + 1] * pl[o01 + k]) +
                               hx[2 * a + 1] *
                                   (hy[2 * b] * pl[o10 + k] + hy[2 * b + 1] * pl[o11 + k]);
                    }
                dst[k] = std::min(std::max(val, 0.0), 1.0);
            }
        }
}

void features(const Image& im, Image& out) {
    const int w = im.width, h = im.height;
    const std::size_t n = im.npixels();
    const bool rgb = im.channels == 3;
    out.reshape(w, h, rgb ? 5 : 3);
    double* grey = out.plane(0);
    const double* src = im.ptr();
    if (rgb) {
        for (std::size_t p = 0; p < n; p++)
            grey[p] = src[3 * p] * .299 + src[3 * p + 1] * .587 + src[3 * p + 2] * .114;
        double* gr = out.plane(3);
        double* gb = out.plane(4);
        for (std::size_t p = 0; p < n; p++) {
            gr[p] = src[3 * p + 1] - src[3 * p];
            gb[p] = src[3 * p + 1] - src[3 * p + 2];
        }
    } else {
        std::copy(src, src + n, grey);
    }
    filter_rows_h(grey, out.plane(1), w, h, 1, kDeriv5, 2);
    filter_rows_v(grey, out.plane(2), w, h, kDeriv5, 2);
}

}  // namespace PYFLOW_ISA
}  // namespace pyflow
