"""Build hook for the optional native parts (futex doorbell, layout packing, shm fast path).

Everything else is declared in pyproject.toml. The extension is optional: when
no C compiler is available the build continues and fastenv uses its pure-Python
fallback (``fastenv doctor`` reports which one is active).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fastenv._native",
            sources=["native/fastenv_native.c"],
            depends=["native/fastenv_wait.h"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
        Extension(
            "fastenv._layout",
            sources=["native/fastenv_layout.c", "native/fastenv_fastpath.c"],
            depends=["native/fastenv_layout.h", "native/fastenv_wait.h"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
    ]
)
