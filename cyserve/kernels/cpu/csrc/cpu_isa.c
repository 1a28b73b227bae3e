/* Which instruction sets this CPU offers the kernels, checked once (libgcc's CPUID and XCR0 reads:
 * an AVX-512 feature counts only when the OS saves the zmm state). */
#include "cys_kernels.h"

static int has_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}

static int has_avx512_vnni(void) {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

static int has_avx_vnni(void) { return has_avx2() && __builtin_cpu_supports("avxvnni"); }

static int probe_isa(int isa) {
    switch (isa) {
    case CYS_ISA_SCALAR: return 1;
    case CYS_ISA_AVX2: return has_avx2();
    case CYS_ISA_AVX_VNNI: return has_avx_vnni();
    case CYS_ISA_AVX512_VNNI: return has_avx512_vnni();
    default: return 0;
    }
}

/* Bit i set when level i is usable; probed once (cys_matmul asks on every call). -1 = not yet. A
 * benign race: every thread computes the same answer. */
static int supported_mask(void) {
    static volatile int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        int mask = 0;
        for (int isa = CYS_ISA_SCALAR; isa <= CYS_ISA_AVX512_VNNI; isa++)
            if (probe_isa(isa)) mask |= 1 << isa;
        cached = mask;
    }
    return cached;
}

int cys_cpu_supports_isa(int isa) {
    return isa >= CYS_ISA_SCALAR && isa <= CYS_ISA_AVX512_VNNI && (supported_mask() >> isa) & 1;
}

int cys_cpu_isa(void) {
    int best = CYS_ISA_SCALAR;
    for (int isa = CYS_ISA_AVX2; isa <= CYS_ISA_AVX512_VNNI; isa++)
        if (cys_cpu_supports_isa(isa)) best = isa;
    return best;
}

int cys_effective_isa(int requested) {
    if (requested > CYS_ISA_AVX512_VNNI) requested = CYS_ISA_AVX512_VNNI;
    for (int isa = requested; isa > CYS_ISA_SCALAR; isa--)
        if (cys_cpu_supports_isa(isa)) return isa;
    return CYS_ISA_SCALAR;
}

int cys_cpu_has_avx2(void) { return cys_cpu_isa() >= CYS_ISA_AVX2; }
