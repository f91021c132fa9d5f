//! Gemini's generateContent as a client speaks it: its requests to
//! chat completions and chat answers back to GenerateContentResponse.

use bytes::Bytes;

use super::{ChatRequest, ClientDialect, ClientHints, ClientRequest};
use crate::upstream::dialect::{StreamTranslator, TranslateError};

/// Gemini's [`ClientDialect`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GenerateContent;

impl ClientDialect for GenerateContent {
    fn to_chat(&self, _req: &ClientRequest<'_>) -> Result<ChatRequest, TranslateError> {
        Err(TranslateError::new("Gemini translation is not built yet"))
    }
    fn answer(&self, _chat: &[u8], _model: &str, _hints: &ClientHints) -> Result<Bytes, TranslateError> {
        Err(TranslateError::new("Gemini translation is not built yet"))
    }
    fn stream(&self, _model: &str, _hints: &ClientHints) -> Box<dyn StreamTranslator> {
        Box::new(crate::upstream::dialect::think::ThinkSplitter::new())
    }
    fn count_tokens(&self, _req: &ClientRequest<'_>) -> Result<Bytes, TranslateError> {
        Err(TranslateError::new("Gemini translation is not built yet"))
    }
}
