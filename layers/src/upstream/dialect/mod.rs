//! Provider wire dialects: pure functions that turn the client's OpenAI
//! request into the provider's, with no I/O. One file per dialect.

pub mod openai;
