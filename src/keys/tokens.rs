//! A request's tokens, as an upstream reported them or the gateway estimated them.

/// The most tokens one count may say, reported or estimated: far above any real request, far
/// below what sums and counters could overflow on (an upstream that reports nonsense, or a
/// client that asks for `max_tokens: 18446744073709551615`, is not believed past it).
pub const MAX_COUNT: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

impl Tokens {
    /// Prompt and completion together (never wrapping, whatever an upstream reported).
    pub fn total(self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}
