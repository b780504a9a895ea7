//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
//! a 64-bit generator whose whole state is one `u64`, so a shuffle or a sampled window is the
//! same on every platform and a saved state resumes the exact sequence.

/// The SplitMix64 generator. `state()` and `from_state()` save and restore it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// Rebuilds a generator from a value returned by `state()`.
    pub fn from_state(state: u64) -> SplitMix64 {
        SplitMix64 { state }
    }

    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Draws uniformly from `0..n` without modulo bias. Panics when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below needs a non-empty range");
        // Reject the draws above the largest multiple of n, so every residue is equally likely.
        let limit = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < limit {
                return x % n;
            }
        }
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// Draws uniformly from [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Draws a standard normal value by the Box-Muller transform.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Draws `n` normal values with standard deviation `std`, redrawing any outside two
    /// deviations, as timm's `trunc_normal_` with bounds at +-2 std.
    pub fn trunc_normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                loop {
                    let z = self.normal();
                    if z.abs() <= 2.0 {
                        break (z * std as f64) as f32;
                    }
                }
            })
            .collect()
    }

    /// Draws `n` untruncated normal values with standard deviation `std`, as GPT-2's
    /// initialisation.
    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std as f64) as f32).collect()
    }
}
