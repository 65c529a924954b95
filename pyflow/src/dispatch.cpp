// Run-time choice of the instruction set of the Coarse2Fine core.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "coarse2fine.h"
#include "isa.h"

namespace pyflow {

namespace {

struct Core {
    const char* name;
    FlowFunction* flow;
};

const Core kBaseline{"baseline", baseline::coarse2fine_flow};
#if PYFLOW_MULTI_ISA
const Core kAvx2{"avx2", avx2::coarse2fine_flow};
const Core kAvx512{"avx512", avx512::coarse2fine_flow};
#endif

bool supported(const Core& core) {
#if PYFLOW_MULTI_ISA
    if (&core == &kAvx2) return __builtin_cpu_supports("avx2");
    if (&core == &kAvx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#endif
    return &core == &kBaseline;
}

const Core* const kCores[] = {
    &kBaseline,
#if PYFLOW_MULTI_ISA
    &kAvx2, &kAvx512,
#endif
};

const Core* find(const char* name) {
    for (const Core* core : kCores)
        if (std::strcmp(core->name, name) == 0) return core;
    return nullptr;
}

const Core* best() {
    const char* wanted = std::getenv("PYFLOW_ISA");
    if (wanted != nullptr) {
        const Core* core = find(wanted);
        if (core != nullptr && supported(*core)) return core;
    }
#if PYFLOW_MULTI_ISA
    if (supported(kAvx512)) return &kAvx512;
    if (supported(kAvx2)) return &kAvx2;
#endif
    return &kBaseline;
}

std::atomic<const Core*>& current() {
    static std::atomic<const Core*> core{best()};
    return core;
}

}  // namespace

void coarse2fine_flow(const double* im1, const double* im2, int h, int w, int c,
                      const FlowParams& params, double* u, double* v, double* im2w) {
    current().load()->flow(im1, im2, h, w, c, params, u, v, im2w);
}

const char* active_isa() { return current().load()->name; }

bool select_isa(const char* name) {
    const Core* core = find(name);
    if (core == nullptr || !supported(*core)) return false;
    current().store(core);
    return true;
}

}  // namespace pyflow
