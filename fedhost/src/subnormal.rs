//! Subnormal floats flushed to zero on a training thread.
//!
//! Late in training, backpropagation produces values below f32's normal
//! range (about 1e-38), and on Intel cores every arithmetic operation on one
//! takes a slow microcode path: measured on a 2-core Intel Xeon (AVX-512),
//! two CNN clients trained 8.1k samples/s each, 16.9k with subnormals flushed
//! (the bench, which trains a fresh model briefly, meets none and ran 20k).
//! AMD's cores pay far less, which is why the same run was twice as fast on a
//! 2-core EPYC. Flushing (MXCSR's FTZ and DAZ bits) changes results only
//! below 1e-38, far under what a weight or gradient means.
//!
//! Written by hand: it is two bits of one register, set with the standard
//! library's intrinsics; the crates that do it wrap the same two lines.

/// Makes this thread's SSE/AVX arithmetic treat subnormal inputs as zero and
/// flush subnormal results to zero (x86-64; elsewhere it does nothing).
pub fn flush_to_zero() {
    #[cfg(target_arch = "x86_64")]
    set_ftz_daz();
}

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6), set.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, deprecated)]
fn set_ftz_daz() {
    use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
    const FTZ_DAZ: u32 = 0x8040;
    // SAFETY: MXCSR is this thread's own floating-point control register;
    // setting FTZ and DAZ changes only how subnormals round, and every x86-64
    // CPU has SSE2, which both bits need. (The intrinsics are deprecated in
    // favour of inline assembly, which would be no safer.)
    unsafe {
        _mm_setcsr(_mm_getcsr() | FTZ_DAZ);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn subnormals_are_flushed_on_the_thread_that_asks_and_only_there() {
        // Computed at run time so the compiler cannot fold it.
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        let half = std::hint::black_box(0.5f32);
        let before = std::thread::spawn(move || tiny * half).join().unwrap();
        assert!(
            before > 0.0 && !before.is_normal(),
            "a subnormal: {before:e}"
        );
        let after = std::thread::spawn(move || {
            super::flush_to_zero();
            tiny * half
        })
        .join()
        .unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(after, 0.0);
        }
    }
}
