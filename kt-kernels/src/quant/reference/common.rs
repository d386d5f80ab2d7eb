//! Helpers shared by the reference quantizers (rounding, scale search).
