//! [`ChainedStream`]: a provider's stream translated to chat chunks, and
//! those to the client's events, in one pass per event.

use bytes::Bytes;

use super::super::{SseEvent, SseFramer, StreamTranslator, TranslateError};
use crate::usage::Usage;

/// Two translators in a row: the provider's (its events to chat chunks;
/// `None` when the provider speaks chat completions) then the client's
/// (chat chunks to its events).
pub struct ChainedStream {
    provider: Option<Box<dyn StreamTranslator>>,
    client: Box<dyn StreamTranslator>,
}

impl std::fmt::Debug for ChainedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainedStream").field("translates_provider", &self.provider.is_some()).finish()
    }
}

impl ChainedStream {
    /// The provider's translator (if any) feeding the client's.
    pub fn new(provider: Option<Box<dyn StreamTranslator>>, client: Box<dyn StreamTranslator>) -> Self {
        Self { provider, client }
    }

    fn feed(&mut self, chunks: Vec<Bytes>) -> Result<Vec<Bytes>, TranslateError> {
        let mut out = Vec::new();
        // The provider's translator writes whole `data: ...` events; a
        // framer reads them back, whatever their line ends.
        let mut framer = SseFramer::new();
        for chunk in chunks {
            for event in framer.push(&chunk) {
                out.extend(self.client.event(&event)?);
            }
        }
        if let Some(event) = framer.finish() {
            out.extend(self.client.event(&event)?);
        }
        Ok(out)
    }
}

impl StreamTranslator for ChainedStream {
    fn event(&mut self, event: &SseEvent) -> Result<Vec<Bytes>, TranslateError> {
        match &mut self.provider {
            None => self.client.event(event),
            Some(provider) => {
                let chunks = provider.event(event)?;
                self.feed(chunks)
            }
        }
    }

    fn finish(&mut self) -> Vec<Bytes> {
        let mut out = match self.provider.as_mut().map(|p| p.finish()) {
            // The provider's last words (its usage chunk and `[DONE]`).
            Some(chunks) => self.feed(chunks).unwrap_or_default(),
            None => Vec::new(),
        };
        out.extend(self.client.finish());
        out
    }

    fn is_complete(&self) -> bool {
        match &self.provider {
            Some(provider) => provider.is_complete(),
            None => self.client.is_complete(),
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.provider.as_ref().and_then(|p| p.usage()).or_else(|| self.client.usage())
    }
}
