"""Build the C++ Coarse2Fine flow extension (pyflow._pyflow).

    pip install ./pyflow                      # from the repository root
    cd pyflow && python setup.py build_ext -i # in place, the original pyflow habit

Needs only setuptools, Cython and a C++17 compiler (no NumPy headers: the binding uses typed
memoryviews). The wheel runs on any x86-64 CPU: AVX2 and AVX-512 variants of the core are
chosen at run time. PYFLOW_NATIVE=1 compiles the baseline for this machine's CPU
(-march=native); results stay identical, floating-point contraction (FMA) being disabled.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
os.chdir(HERE)  # setuptools wants source paths relative to this folder

# The core is compiled once per instruction set by the src/isa_*.cpp files (which include the
# other .cpp files) and chosen at run time by src/dispatch.cpp.
SOURCES = ["_pyflow.pyx", "src/dispatch.cpp"] + [f"src/isa_{name}.cpp" for name in
                                                 ("baseline", "avx2", "avx512")]
# -ffp-contract=off: no fused multiply-add, so that every machine and instruction set computes
# the reference's bits (it was built without FMA). No -ffast-math: it would change results.
# -fno-math-errno only lets sqrt vectorise (it never sets errno on our non-negative inputs).
FLAGS = ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno"]
if os.environ.get("PYFLOW_NATIVE", "") not in ("", "0"):
    FLAGS.append("-march=native")


class BuildPyWithoutScripts(build_py):
    """Install the package modules, but not this build script or the repo-only demo."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if m[1] not in ("setup", "demo")]


setup(
    packages=["pyflow"],
    package_dir={"pyflow": "."},
    ext_modules=cythonize(
        [Extension("pyflow._pyflow", SOURCES, language="c++", include_dirs=["src"],
                   extra_compile_args=FLAGS, depends=[f"src/{n}" for n in os.listdir("src")])],
        language_level=3,
    ),
    cmdclass={"build_py": BuildPyWithoutScripts},
)
