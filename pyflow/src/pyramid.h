// Gaussian pyramid of the Coarse2Fine flow.
#pragma once

#include "isa.h"

#include <vector>

#include "image.h"

namespace pyflow {
namespace PYFLOW_ISA {

// Pyramid ratio actually used: the reference replaces ratios outside [0.4, 0.98] by 0.75.
double effective_ratio(double ratio);

// Number of levels: int(log(minWidth / W) / log(ratio)), at least 1, and never so many that a
// level would be less than one pixel wide or high (the reference misbehaves in both cases).
int pyramid_levels(int width, int height, double ratio, int min_width);

// Fills levels[1..n_levels-1] from levels[0] (the input): level i is the input smoothed with
// sigma = (1/ratio - 1) i and resized by ratio^i, or, past n = int(log(0.25)/log(ratio)),
// level i - n smoothed again and resized. `smoothed` and `tmp` are scratch.
void build_pyramid(std::vector<Image>& levels, double ratio, int n_levels, Image& smoothed,
                   Image& tmp);

}  // namespace PYFLOW_ISA
}  // namespace pyflow
