//! Compute kernels: the ternary × int8 products, the dense output product, and the small float
//! operations of the forward pass.
//!
//! `scalar` is the reference for every operation. Knows the formats' block types, nothing of
//! models.

pub mod scalar;

pub use scalar::{
    f16_dot, f32_dot, i2s_dot, quantize_row_i8, rms_norm, rope_neox, softmax, tq1_0_dot, tq2_0_dot,
};
