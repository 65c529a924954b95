// The SOR sweeps of the Coarse2Fine solver, vectorised without changing a single rounding.
//
// The reference visits pixels row by row, left to right, updating in place (Gauss-Seidel),
// so pixel (i, j) needs the new values of (i, j-1) and (i-1, j) and the old ones of (i, j+1)
// and (i+1, j). Pixels (i, j), (i+1, j-1), ..., (i+B-1, j-B+1) of a band of B rows are
// therefore independent: one vector step updates them all, lane r handling row i0 + r at
// column t - r. Each lane performs exactly the reference's operations in its order, so the
// results are bit-identical; only the dependency chain is shared by B pixels.
//
// Storage is "band-skewed": band b holds its B rows as W + B + 1 steps of B lanes, the cell
// (row i0 + r, column j) at step j + r + 1, lane r. Cells outside the image (the skew's
// triangles, rows past H) have zero coefficients and stay 0; the reference's missing border
// neighbours are zero weights, which add exact zeros.
#pragma once

#include "buffer.h"
#include "isa.h"

#include <cstddef>
#include <vector>

namespace pyflow {
namespace PYFLOW_ISA {

class BandLayout {
  public:
    static constexpr int kBand = 8;  // rows per band: pixels updated by one vector step

    void reset(int width, int height);
    int width() const { return width_; }
    int height() const { return height_; }
    int bands() const { return bands_; }
    int steps() const { return width_ + kBand + 1; }  // per band, with one padding step at each end
    std::size_t cells() const { return static_cast<std::size_t>(bands_) * steps() * kBand; }
    // Index of the step holding cell (i, j), over all bands; its lane is i % kBand.
    std::size_t step(int i, int j) const {
        return static_cast<std::size_t>(i / kBand) * steps() + (j + i % kBand + 1);
    }
    std::size_t offset(int i, int j) const { return step(i, j) * kBand + i % kBand; }
    // Row-major H x W <- band layout.
    void unpack(const double* src, double* dst) const;

  private:
    int width_ = 0, height_ = 0, bands_ = 0;
};

// Per-pixel coefficients of the SOR system, interleaved per step so that one step reads one
// contiguous block: coef[(step * kFields + field) * kBand + lane]. The left and upper weights
// are not stored: phi(i, j-1) is the right weight of the left neighbour and phi(i-1, j) the
// lower weight of the upper neighbour (both 0 at the borders, as needed).
struct SorSystem {
    enum Field { kWr, kWd, kAxy, kRu, kRv, kIdu, kIdv, kFields };
    // Right and lower weights phi (0 where there is no neighbour), Axy, the right-hand sides,
    // and the scaled inverse diagonals omega / (Axx + 0.05 alpha + alpha sum(w)), same with Ayy.
    Buffer coef;

    void reset(const BandLayout& layout) { coef.assign(layout.cells() * kFields, 0.0); }
};

// nSOR sweeps of (du, dv) (band layout, updated in place) with the reference's update:
//   s_u = -alpha * sum(w * du[nb]) + Axy dv;  du = (1 - omega) du + idu * (ru - s_u)
//   s_v = -alpha * sum(w * dv[nb]) + Axy du;  dv = (1 - omega) dv + idv * (rv - s_v)
// with the neighbours summed left, right, up, down.
void sor_sweeps(const BandLayout& layout, const SorSystem& sys, double alpha, double omega,
                int n_sweeps, double* du, double* dv);

}  // namespace PYFLOW_ISA
}  // namespace pyflow
