//! The built-in providers: real base URLs and auth styles. Any other
//! provider is OpenAI-compatible and named by its `api_base`.

use keyrelay_layers::provider::Dialect;

/// One built-in provider; its dialect brings its auth style.
#[derive(Clone, Copy, Debug)]
pub struct Builtin {
    pub id: &'static str,
    /// As the provider's own SDK takes it: OpenAI-compatible bases include
    /// the version path; Anthropic's and Gemini's are host-only.
    pub api_base: &'static str,
    pub dialect: Dialect,
}

const fn openai_compatible(id: &'static str, api_base: &'static str) -> Builtin {
    Builtin { id, api_base, dialect: Dialect::OpenAi }
}

pub const BUILTINS: &[Builtin] = &[
    Builtin { id: "anthropic", api_base: "https://api.anthropic.com", dialect: Dialect::Anthropic },
    Builtin { id: "gemini", api_base: "https://generativelanguage.googleapis.com", dialect: Dialect::Gemini },
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
            Provider::new(b.id, b.api_base, b.dialect).unwrap();
            assert!(BUILTINS[..i].iter().all(|other| other.id != b.id), "{} twice", b.id);
            assert!(b.id.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'), "{}", b.id);
        }
    }
}
