"""CPU kernels: C with AVX2+FMA (chosen at run time) and a scalar twin, wrapped by Cython."""
