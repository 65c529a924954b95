// Cache-line aligned storage: full-width vector loads then never straddle two lines.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

#include "isa.h"

namespace pyflow {
namespace PYFLOW_ISA {  // per ISA, so that no two variants share an inline function

template <class T>
struct AlignedAllocator {
    using value_type = T;
    static constexpr std::align_val_t kAlign{64};

    AlignedAllocator() = default;
    template <class U>
    AlignedAllocator(const AlignedAllocator<U>&) {}

    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
    void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }

    template <class U>
    bool operator==(const AlignedAllocator<U>&) const { return true; }
    template <class U>
    bool operator!=(const AlignedAllocator<U>&) const { return false; }
};

using Buffer = std::vector<double, AlignedAllocator<double>>;

}  // namespace PYFLOW_ISA
}  // namespace pyflow
