//! OpenAI's Responses API as a client speaks it: Responses requests to
//! chat completions and chat answers back to `response` objects.

use bytes::Bytes;

use super::{ChatRequest, ClientDialect, ClientHints, ClientRequest};
use crate::upstream::dialect::{StreamTranslator, TranslateError};

/// The Responses API's [`ClientDialect`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Responses;

impl ClientDialect for Responses {
    fn to_chat(&self, _req: &ClientRequest<'_>) -> Result<ChatRequest, TranslateError> {
        Err(TranslateError::new("Responses translation is not built yet"))
    }
    fn answer(&self, _chat: &[u8], _model: &str, _hints: &ClientHints) -> Result<Bytes, TranslateError> {
        Err(TranslateError::new("Responses translation is not built yet"))
    }
    fn stream(&self, _model: &str, _hints: &ClientHints) -> Box<dyn StreamTranslator> {
        Box::new(crate::upstream::dialect::think::ThinkSplitter::new())
    }
    fn count_tokens(&self, _req: &ClientRequest<'_>) -> Result<Bytes, TranslateError> {
        Err(TranslateError::new("Responses translation is not built yet"))
    }
}
