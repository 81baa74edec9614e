// The emulator's build of csrc/kernels/selftest.cu: the same source, host compiler.
#include "../kernels/selftest.cu"
