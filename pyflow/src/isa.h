// Which instruction set the core is being compiled for.
//
// The core (image, pyramid, sor, solver, flow) is compiled once per instruction set by the
// isa_*.cpp files, each time in its own namespace pyflow::PYFLOW_ISA; dispatch.cpp picks the
// best one the CPU supports at run time. Every ISA computes the same bits: there is no
// floating-point contraction (-ffp-contract=off) and no reassociation, so a lane of a wider
// vector performs exactly the operations of the scalar reference.
#pragma once

#ifndef PYFLOW_ISA
#define PYFLOW_ISA baseline  // SSE2 on x86-64, NEON on arm64
#define PYFLOW_LANES 2       // doubles per SIMD vector in the SOR kernel
#endif

// Extra x86-64 variants need GCC's `#pragma GCC target` (clang and others build the baseline).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PYFLOW_MULTI_ISA 1
#else
#define PYFLOW_MULTI_ISA 0
#endif
