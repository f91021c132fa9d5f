//! OpenAI content parts (text, images, audio, files) as Gemini parts.

use serde_json::{Value, json};

use super::{TranslateError, err};

/// A message's `content` (a string, an array of parts, or null) as Gemini parts.
pub(super) fn content_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![json!({ "text": text })]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (k, part) in parts.iter().enumerate() {
                out.extend(content_part(part, &format!("{at}.content[{k}]"))?);
            }
            Ok(out)
        }
        Some(_) => Err(err(format!("{at}.content must be a string, an array of parts or null"))),
    }
}

fn content_part(part: &Value, at: &str) -> Result<Option<Value>, TranslateError> {
    let kind = part.get("type").and_then(Value::as_str).ok_or_else(|| err(format!("{at}.type is missing")))?;
    let text = |field: &str| -> Result<Option<Value>, TranslateError> {
        let text = part.get(field).and_then(Value::as_str).ok_or_else(|| err(format!("{at}.{field} is missing")))?;
        Ok((!text.is_empty()).then(|| json!({ "text": text })))
    };
    match kind {
        "text" => text("text"),
        "refusal" => text("refusal"),
        "image_url" => {
            let url = match part.get("image_url") {
                Some(Value::String(url)) => url.as_str(),
                Some(image) => image.get("url").and_then(Value::as_str).unwrap_or_default(),
                None => "",
            };
            if url.is_empty() {
                return Err(err(format!("{at}.image_url.url is missing")));
            }
            media_part(url, "image/jpeg", at).map(Some)
        }
        "input_audio" => {
            let audio = part.get("input_audio");
            let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
            let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
            match (data, format) {
                (Some(data), Some(format)) => {
                    Ok(Some(json!({ "inlineData": { "mimeType": format!("audio/{format}"), "data": data } })))
                }
                _ => Err(err(format!("{at}.input_audio needs `data` and `format`"))),
            }
        }
        "file" => {
            let file = part.get("file");
            let data = file.and_then(|f| f.get("file_data")).and_then(Value::as_str);
            let id = file.and_then(|f| f.get("file_id")).and_then(Value::as_str);
            match (data, id) {
                (Some(data), _) if data.starts_with("data:") => media_part(data, "application/pdf", at).map(Some),
                (Some(data), _) => {
                    // Bare base64, as some clients send it: the name says what it is.
                    let name = file.and_then(|f| f.get("filename")).and_then(Value::as_str).unwrap_or_default();
                    let mime = guess_mime(name).unwrap_or("application/pdf");
                    Ok(Some(json!({ "inlineData": { "mimeType": mime, "data": data } })))
                }
                (None, Some(id)) if is_remote(id) => media_part(id, "application/pdf", at).map(Some),
                _ => Err(err(format!("{at}.file needs `file_data` (base64 or a data: URL) or a URL as `file_id`"))),
            }
        }
        other => Err(err(format!("{at}.type `{other}` is not a content part Gemini takes"))),
    }
}

fn is_remote(url: &str) -> bool {
    ["https://", "http://", "gs://"].iter().any(|scheme| url.starts_with(scheme))
}

/// A data URL as `inlineData`, a remote URL as `fileData`.
fn media_part(url: &str, default_mime: &str, at: &str) -> Result<Value, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) =
            rest.split_once(',').ok_or_else(|| err(format!("{at}: a data: URL needs a `,` before its data")))?;
        let mut fields = header.split(';');
        let mime = fields.next().unwrap_or_default().trim();
        if !fields.any(|f| f.trim().eq_ignore_ascii_case("base64")) {
            return Err(err(format!("{at}: only base64 data: URLs can be sent to Gemini")));
        }
        let mime = if mime.is_empty() { default_mime } else { mime };
        return Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }));
    }
    if is_remote(url) {
        let mime = guess_mime(url).unwrap_or(default_mime);
        return Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }));
    }
    Err(err(format!("{at}: a media URL must be a base64 data: URL or an http(s) or gs:// URL")))
}

/// The MIME type a URL's or file name's extension says.
fn guess_mime(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    let (_, ext) = name.rsplit_once('.')?;
    let mime = match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "ogg" => "audio/ogg",
        "flac" => "audio/flac",
        "aac" => "audio/aac",
        "mp4" => "video/mp4",
        "mov" => "video/mov",
        "webm" => "video/webm",
        _ => return None,
    };
    Some(mime)
}
