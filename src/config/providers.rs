//! The built-in providers: real base URLs and auth styles. Any other
//! provider is OpenAI-compatible and named by its `api_base`.

use keyrelay_layers::provider::{AuthStyle, Dialect};

/// One built-in provider.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    pub id: &'static str,
    /// As the provider's own SDK takes it: OpenAI-compatible bases include
    /// the version path.
    pub api_base: &'static str,
    pub dialect: Dialect,
    pub auth: fn() -> AuthStyle,
}

const fn openai_compatible(id: &'static str, api_base: &'static str) -> Builtin {
    Builtin { id, api_base, dialect: Dialect::OpenAi, auth: || AuthStyle::Bearer }
}

/// Anthropic and Gemini join with their own dialects.
pub const BUILTINS: &[Builtin] = &[
    openai_compatible("openai", "https://api.openai.com/v1"),
    openai_compatible("openrouter", "https://openrouter.ai/api/v1"),
    openai_compatible("nvidia_nim", "https://integrate.api.nvidia.com/v1"),
    openai_compatible("groq", "https://api.groq.com/openai/v1"),
    openai_compatible("mistral", "https://api.mistral.ai/v1"),
    openai_compatible("deepseek", "https://api.deepseek.com/v1"),
    openai_compatible("together", "https://api.together.xyz/v1"),
    openai_compatible("fireworks", "https://api.fireworks.ai/inference/v1"),
    openai_compatible("xai", "https://api.x.ai/v1"),
    openai_compatible("cerebras", "https://api.cerebras.ai/v1"),
    openai_compatible("chutes", "https://llm.chutes.ai/v1"),
];

/// Providers whose native dialect is not built yet: their keys are ignored
/// with a note rather than sent to an endpoint that would not understand them.
pub const NOT_YET_SUPPORTED: &[&str] = &["anthropic", "gemini"];

pub fn builtin(id: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.id == id)
}

#[cfg(test)]
mod tests {
    use keyrelay_layers::provider::Provider;

    use super::*;

    #[test]
    fn every_builtin_base_parses_and_ids_are_unique() {
        for (i, b) in BUILTINS.iter().enumerate() {
            Provider::openai_compatible(b.id, b.api_base).unwrap();
            assert!(BUILTINS[..i].iter().all(|other| other.id != b.id), "{} twice", b.id);
            assert!(b.id.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'), "{}", b.id);
        }
    }
}
