//! Gemini `Part`s: what each one is, and a user turn's media as chat
//! content parts.

use serde_json::{Map, Value, json};

use super::{TranslateError, echo, err, field};

/// Where the Gemini API keeps uploaded files (Files API URIs).
const FILES_API_HOST: &str = "generativelanguage.googleapis.com";

/// What a part holds (Gemini's `data` oneof).
#[derive(Debug)]
pub(super) enum Kind<'a> {
    Text {
        text: &'a str,
        thought: bool,
    },
    InlineData(&'a Map<String, Value>),
    FileData(&'a Map<String, Value>),
    FunctionCall(&'a Value),
    FunctionResponse(&'a Value),
    /// `executableCode`, `codeExecutionResult`: Google's code execution.
    CodeExecution(&'static str),
    /// Only metadata (a thought signature, video offsets): nothing to send.
    Nothing,
}

impl Kind<'_> {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::InlineData(_) => "inlineData",
            Self::FileData(_) => "fileData",
            Self::FunctionCall(_) => "functionCall",
            Self::FunctionResponse(_) => "functionResponse",
            Self::CodeExecution(name) => name,
            Self::Nothing => "empty part",
        }
    }
}

/// What `part` holds.
pub(super) fn kind_of<'a>(part: &'a Value, at: &str) -> Result<Kind<'a>, TranslateError> {
    let part = part.as_object().ok_or_else(|| err(format!("{at} must be a Part object")))?;
    if let Some(text) = field(part, "text") {
        let text = text.as_str().ok_or_else(|| err(format!("{at}.text must be a string")))?;
        let thought = field(part, "thought").and_then(Value::as_bool).unwrap_or(false);
        return Ok(Kind::Text { text, thought });
    }
    let object = |name: &str| -> Result<Option<&'a Map<String, Value>>, TranslateError> {
        match field(part, name) {
            None => Ok(None),
            Some(Value::Object(object)) => Ok(Some(object)),
            Some(_) => Err(err(format!("{at}.{name} must be an object"))),
        }
    };
    if let Some(data) = object("inlineData")? {
        return Ok(Kind::InlineData(data));
    }
    if let Some(data) = object("fileData")? {
        return Ok(Kind::FileData(data));
    }
    if let Some(call) = field(part, "functionCall") {
        return Ok(Kind::FunctionCall(call));
    }
    if let Some(response) = field(part, "functionResponse") {
        return Ok(Kind::FunctionResponse(response));
    }
    for name in ["executableCode", "codeExecutionResult"] {
        if field(part, name).is_some() {
            return Ok(Kind::CodeExecution(name));
        }
    }
    let metadata = ["thought", "thoughtSignature", "videoMetadata", "mediaResolution", "partMetadata"];
    if part.keys().all(|key| metadata.iter().any(|m| key == m || *key == super::snake_case(m))) {
        return Ok(Kind::Nothing);
    }
    Err(err(format!(
        "{at} holds none of text, inlineData, fileData, functionCall, functionResponse that chat completions can take"
    )))
}

/// A user turn's part (not a function result) as a chat content part;
/// `None` for what carries nothing (empty text, metadata).
pub(super) fn user_part(kind: Kind<'_>, at: &str) -> Result<Option<Value>, TranslateError> {
    match kind {
        Kind::Text { text: "", .. } => Ok(None),
        Kind::Text { text, .. } => Ok(Some(json!({ "type": "text", "text": text }))),
        Kind::InlineData(data) => inline_data(data, &format!("{at}.inlineData")).map(Some),
        Kind::FileData(data) => file_data(data, &format!("{at}.fileData")).map(Some),
        Kind::CodeExecution(name) => Err(err(format!(
            "{at}.{name}: code execution runs only at Google; use a gemini/ model, or send its code and output as text"
        ))),
        Kind::Nothing => Ok(None),
        // The conversation pairs these up before any part gets here.
        Kind::FunctionCall(_) | Kind::FunctionResponse(_) => {
            Err(err(format!("{at}: a function part cannot stand among a turn's content")))
        }
    }
}

/// `inlineData` (base64 bytes): images as data URLs, PDFs as files, WAV
/// and MP3 audio as `input_audio`.
fn inline_data(data: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    let mime = mime_type(data, at)?;
    let bytes = field(data, "data").and_then(Value::as_str).ok_or_else(|| err(format!("{at}.data is missing")))?;
    if mime.starts_with("image/") {
        return Ok(json!({ "type": "image_url", "image_url": { "url": format!("data:{mime};base64,{bytes}") } }));
    }
    if mime == "application/pdf" {
        let filename = field(data, "displayName").and_then(Value::as_str).unwrap_or("document.pdf");
        return Ok(json!({
            "type": "file",
            "file": { "filename": filename, "file_data": format!("data:application/pdf;base64,{bytes}") },
        }));
    }
    if let Some(subtype) = mime.strip_prefix("audio/") {
        let format = match subtype {
            "wav" | "x-wav" | "wave" | "vnd.wave" => "wav",
            "mp3" | "mpeg" | "mpeg3" | "x-mp3" => "mp3",
            _ => {
                return Err(err(format!(
                    "{at}.mimeType `{}`: chat completions takes audio only as WAV or MP3",
                    echo(&mime)
                )));
            }
        };
        return Ok(json!({ "type": "input_audio", "input_audio": { "data": bytes, "format": format } }));
    }
    Err(err(format!(
        "{at}.mimeType `{}` cannot go through chat completions, which take images, PDFs and WAV or MP3 audio \
         (send text as a text part)",
        echo(&mime)
    )))
}

/// `fileData` (a URI): an http(s) image URL; Google's own file stores are
/// out of reach of any other provider.
fn file_data(data: &Map<String, Value>, at: &str) -> Result<Value, TranslateError> {
    let uri = field(data, "fileUri").and_then(Value::as_str).ok_or_else(|| err(format!("{at}.fileUri is missing")))?;
    let lower = uri.to_ascii_lowercase();
    if lower.starts_with("gs://") || lower.contains(FILES_API_HOST) {
        return Err(err(format!(
            "{at}.fileUri `{}` lives only at Google (Files API or Cloud Storage); use a gemini/ model, or send the \
             file inline as inlineData",
            echo(uri)
        )));
    }
    let mime = match field(data, "mimeType") {
        Some(_) => mime_type(data, at)?,
        None => String::new(),
    };
    let image = mime.starts_with("image/") || (mime.is_empty() && looks_like_image(&lower));
    let web = lower.starts_with("https://") || lower.starts_with("http://");
    if image && web {
        return Ok(json!({ "type": "image_url", "image_url": { "url": uri } }));
    }
    Err(err(format!(
        "{at}: only http(s) image URLs can go through chat completions (not `{}`); send other files inline as \
         inlineData",
        echo(uri)
    )))
}

fn mime_type(data: &Map<String, Value>, at: &str) -> Result<String, TranslateError> {
    let mime =
        field(data, "mimeType").and_then(Value::as_str).ok_or_else(|| err(format!("{at}.mimeType is missing")))?;
    Ok(mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

fn looks_like_image(uri: &str) -> bool {
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    let extension = path.rsplit_once('.').map(|(_, ext)| ext).unwrap_or_default();
    matches!(extension, "png" | "jpg" | "jpeg" | "gif" | "webp" | "heic" | "heif")
}
