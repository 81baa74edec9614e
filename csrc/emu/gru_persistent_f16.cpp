// The emulator's build of csrc/kernels/gru_persistent_f16.cu: the same source, host compiler.
#include "../kernels/gru_persistent_f16.cu"
