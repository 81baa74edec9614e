// The emulator's build of csrc/kernels/gru_step.cu: the same source, host compiler.
#include "../kernels/gru_step.cu"
