/* The instruction sets a kernel may use beyond x86-64-v2, picked at run time (shared by the kernels of
 * compression/_*.c that compile a second copy of their loops with target attributes). setup.py builds
 * for x86-64-v2 and never -march=native, so these are looked up on the CPU that runs the wheel:
 * cpu_pick(0) at import, cpu_pick(1) from set_portable(True) (tests run both ways). */
#ifndef DELTAZOO_CPU_H
#define DELTAZOO_CPU_H

typedef struct {
    int bmi2;   /* shrx, bzhi */
    int avx2;   /* AVX2 and BMI2 */
    int clmul;  /* PCLMULQDQ and SSE4.1 */
    int vclmul; /* and VPCLMULQDQ on 256 bits (AVX2) */
} cpu_features;

/* The features of this CPU, or none when portable (or where no target clone is compiled). */
static inline cpu_features cpu_pick(int portable) {
    cpu_features f = {0, 0, 0, 0};
#if defined(__x86_64__) && defined(__GNUC__)
    if (portable) return f;
    __builtin_cpu_init();
    f.bmi2 = __builtin_cpu_supports("bmi2");
    f.avx2 = f.bmi2 && __builtin_cpu_supports("avx2");
    f.clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    f.vclmul = f.clmul && f.avx2 && __builtin_cpu_supports("vpclmulqdq");
#else
    (void)portable;
#endif
    return f;
}

#endif
