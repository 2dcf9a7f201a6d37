//! A request's tokens, as an upstream reported them or the gateway estimated them.

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
