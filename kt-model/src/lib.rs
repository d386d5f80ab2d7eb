//! kt-model: GGUF loading and the DeepSeek V2/V3 forward pass, built on kt-kernels.
