//! Stage 5 of a request: forward it upstream and stream the answer back.

pub mod headers;
pub mod pool;
pub mod response_body;
pub mod upstream;
