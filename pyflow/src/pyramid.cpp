#include "pyramid.h"

#include <cmath>

namespace pyflow {
namespace PYFLOW_ISA {

double effective_ratio(double ratio) { return (ratio > 0.98 || ratio < 0.4) ? 0.75 : ratio; }

// Size of level i, following build_pyramid's rules without computing any pixel.
static void level_size(int width, int height, double ratio, int i, int n, const int* widths,
                       const int* heights, int& w, int& h) {
    if (i <= n) {
        const double r = std::pow(ratio, i);
        w = static_cast<int>(static_cast<double>(width) * r);
        h = static_cast<int>(static_cast<double>(height) * r);
    } else {
        const double r = std::pow(ratio, i) * width / widths[i - n];
        w = static_cast<int>(static_cast<double>(widths[i - n]) * r);
        h = static_cast<int>(static_cast<double>(heights[i - n]) * r);
    }
}

int pyramid_levels(int width, int height, double ratio, int min_width) {
    ratio = effective_ratio(ratio);
    const double wanted = std::log(static_cast<double>(min_width) / width) / std::log(ratio);
    // Compare as doubles: int() of a huge quotient would overflow.
    const int cap = 64;
    int levels = wanted >= cap ? cap : (wanted < 1 ? 1 : static_cast<int>(wanted));
    const int n = static_cast<int>(std::log(0.25) / std::log(ratio));
    std::vector<int> widths(levels), heights(levels);
    widths[0] = width;
    heights[0] = height;
    for (int i = 1; i < levels; i++) {
        level_size(width, height, ratio, i, n, widths.data(), heights.data(), widths[i],
                   heights[i]);
        if (widths[i] < 1 || heights[i] < 1) return i;
    }
    return levels;
}

void build_pyramid(std::vector<Image>& levels, double ratio, int n_levels, Image& smoothed,
                   Image& tmp) {
    ratio = effective_ratio(ratio);
    if (static_cast<int>(levels.size()) < n_levels) levels.resize(n_levels);
    const Image& image = levels[0];
    const double base_sigma = 1 / ratio - 1;
    const int n = static_cast<int>(std::log(0.25) / std::log(ratio));
    const double n_sigma = base_sigma * n;
    for (int i = 1; i < n_levels; i++) {
        if (i <= n) {
            const double sigma = base_sigma * i;
            const int r = static_cast<int>(sigma * 3);  // truncated: 2.9999... gives 2
            const std::vector<double> taps = gaussian_taps(sigma, r);
            filter_hv(image, smoothed, taps.data(), r, tmp);
            resize_by_ratio(smoothed, levels[i], std::pow(ratio, i));
        } else {
            const Image& src = levels[i - n];
            const int r = static_cast<int>(n_sigma * 3);
            const std::vector<double> taps = gaussian_taps(n_sigma, r);
            filter_hv(src, smoothed, taps.data(), r, tmp);
            resize_by_ratio(smoothed, levels[i],
                            std::pow(ratio, i) * image.width / src.width);
        }
    }
}

}  // namespace PYFLOW_ISA
}  // namespace pyflow
