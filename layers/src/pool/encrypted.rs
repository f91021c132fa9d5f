//! Encrypted reasoning, and the key that can read it.
//!
//! OpenAI's reasoning models hand back their reasoning encrypted
//! (`"encrypted_content"` of a `reasoning` item, also of a `compaction`
//! item) for clients that keep no state at OpenAI (`store: false`, as Codex
//! runs): the client sends it back with the next request, and only the
//! organisation whose key encrypted it can read it. So the proxy remembers
//! a digest of every encrypted content it passes back, with its key, in
//! [`ResponseOwners`](super::ResponseOwners) (as `enc:<digest>`), and a
//! request that carries one is bound to that key, as a
//! `previous_response_id` follow-up is.
//!
//! [`EncryptedScanner`] finds the values in a body as it passes, split
//! anywhere, without keeping it; the digest is of the string's content
//! (JSON's `\/` and the like undone), so a client that re-encodes it still
//! matches.
//!
//! ```
//! use keyrelay_layers::pool::EncryptedScanner;
//!
//! let answer = br#"{"type":"reasoning","id":"rs_1","encrypted_content":"gAAAAABo\/x+1bWF5YmUgdGhpcw=="}"#;
//! let mut found = Vec::new();
//! let mut scanner = EncryptedScanner::default();
//! for piece in answer.chunks(5) {
//!     scanner.push(piece, &mut |digest| found.push(digest));
//! }
//! let request = br#"{"input": [{"type": "reasoning", "encrypted_content": "gAAAAABo/x+1bWF5YmUgdGhpcw=="}]}"#;
//! assert_eq!(EncryptedScanner::digests(request), found, "the same content, however encoded");
//! assert!(found[0].starts_with("enc:"));
//! ```

use sha2::{Digest, Sha256};

/// The key whose string values are encrypted reasoning.
const KEY: &[u8] = b"\"encrypted_content\"";
/// Values shorter than this are not worth remembering (nor unique).
const MIN_LEN: usize = 16;

/// Finds `"encrypted_content"` string values in a JSON text fed in pieces,
/// and hands each one's digest (`enc:` and 32 hex digits) to a callback.
#[derive(Debug, Default)]
pub struct EncryptedScanner {
    state: State,
    /// Bytes at the end of the last piece that may start the key.
    carry: Vec<u8>,
}

#[derive(Debug, Default)]
enum State {
    /// Looking for the key.
    #[default]
    Seeking,
    /// After the key, before the value's opening quote.
    AfterKey,
    /// Inside the value.
    Value { digest: Box<Sha256>, len: usize, escaped: bool },
}

impl EncryptedScanner {
    /// The digests of every encrypted content in a whole body.
    pub fn digests(body: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        if memchr::memmem::find(body, KEY).is_some() {
            Self::default().push(body, &mut |digest| found.push(digest));
        }
        found
    }

    /// Feeds the next piece; `found` gets the digest of each value it
    /// completes.
    pub fn push(&mut self, piece: &[u8], found: &mut impl FnMut(String)) {
        let joined;
        let mut rest: &[u8] = if self.carry.is_empty() {
            piece
        } else {
            let mut bytes = std::mem::take(&mut self.carry);
            bytes.extend_from_slice(piece);
            joined = bytes;
            &joined
        };
        while !rest.is_empty() {
            rest = match &mut self.state {
                State::Seeking => match memchr::memmem::find(rest, KEY) {
                    Some(at) => {
                        self.state = State::AfterKey;
                        &rest[at + KEY.len()..]
                    }
                    None => {
                        // The key may begin in this piece and end in the next.
                        let keep = rest.len().min(KEY.len() - 1);
                        self.carry = rest[rest.len() - keep..].to_vec();
                        &[]
                    }
                },
                State::AfterKey => {
                    let skip = rest.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'));
                    match skip {
                        None => &[],
                        Some(at) if rest[at] == b'"' => {
                            self.state = State::Value { digest: Box::default(), len: 0, escaped: false };
                            &rest[at + 1..]
                        }
                        // Not a string (`null`): look for the next key.
                        Some(at) => {
                            self.state = State::Seeking;
                            &rest[at..]
                        }
                    }
                }
                State::Value { digest, len, escaped } => {
                    let mut at = 0;
                    let mut done = None;
                    while at < rest.len() {
                        if *escaped {
                            // JSON escapes in base64 are `\/`: the character itself.
                            digest.update(&rest[at..at + 1]);
                            *len += 1;
                            *escaped = false;
                            at += 1;
                            continue;
                        }
                        match memchr::memchr2(b'"', b'\\', &rest[at..]) {
                            Some(offset) => {
                                digest.update(&rest[at..at + offset]);
                                *len += offset;
                                at += offset;
                                if rest[at] == b'\\' {
                                    *escaped = true;
                                    at += 1;
                                } else {
                                    done = Some(at + 1);
                                    break;
                                }
                            }
                            None => {
                                digest.update(&rest[at..]);
                                *len += rest.len() - at;
                                at = rest.len();
                            }
                        }
                    }
                    match done {
                        Some(end) => {
                            let State::Value { digest, len, .. } = std::mem::take(&mut self.state) else {
                                unreachable!("in a value")
                            };
                            if len >= MIN_LEN {
                                found(name(*digest));
                            }
                            &rest[end..]
                        }
                        None => &[],
                    }
                }
            };
        }
    }
}

fn name(digest: Sha256) -> String {
    let bytes = digest.finalize();
    let mut out = String::with_capacity(4 + 32);
    out.push_str("enc:");
    for byte in &bytes[..16] {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&[u8]]) -> Vec<String> {
        let mut found = Vec::new();
        let mut scanner = EncryptedScanner::default();
        for piece in pieces {
            scanner.push(piece, &mut |d| found.push(d));
        }
        found
    }

    #[test]
    fn finds_every_value_whatever_the_split() {
        let body = br#"{"output":[{"type":"reasoning","encrypted_content":"AAAAAAAAAAAAAAAAAAAA1"},
            {"type":"compaction","encrypted_content" :  "BBBBBBBBBBBBBBBBBBBB2"},{"encrypted_content":null},
            {"encrypted_content":"short"}]}"#;
        let whole = scan(&[body]);
        assert_eq!(whole.len(), 2, "two long strings; null and short ones are not remembered");
        assert_ne!(whole[0], whole[1]);
        for split in 1..body.len() {
            let pieces: Vec<&[u8]> = body.chunks(split).collect();
            assert_eq!(scan(&pieces), whole, "split every {split}");
        }
        assert_eq!(EncryptedScanner::digests(body), whole);
        assert!(EncryptedScanner::digests(br#"{"input":"no reasoning here"}"#).is_empty());
    }
}
