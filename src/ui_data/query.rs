//! The data routes' query strings: one known parameter each.

use keyrelay_layers::extensions::percent_decode;

use super::series::Window;

/// The most rows `/v1/ui/recent` answers.
pub const MAX_RECENT: u32 = 200;
const DEFAULT_RECENT: u32 = 50;

/// `window=1h|24h` (default `1h`).
pub fn window(query: Option<&str>) -> Result<Window, String> {
    match only(query, "window")?.as_deref() {
        None | Some("1h") => Ok(Window::Hour),
        Some("24h") => Ok(Window::Day),
        Some(other) => Err(format!("invalid query parameter `window`: `{}`; expected 1h or 24h", cut(other))),
    }
}

/// `limit=N` (default 50, at most 200).
pub fn limit(query: Option<&str>) -> Result<u32, String> {
    match only(query, "limit")? {
        None => Ok(DEFAULT_RECENT),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_RECENT).contains(&n) => Ok(n),
            _ => Err(format!("invalid query parameter `limit`: `{}`; expected 1 to {MAX_RECENT}", cut(&text))),
        },
    }
}

/// The value of `name`, the one parameter the route takes.
fn only(query: Option<&str>, name: &str) -> Result<Option<String>, String> {
    let mut value = None;
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            return Err(format!("invalid query parameter `{}`: unknown; known: {name}", cut(key)));
        }
        if value.is_some() {
            return Err(format!("invalid query parameter `{name}`: given more than once"));
        }
        value = Some(percent_decode(raw).ok_or_else(|| format!("invalid query parameter `{name}`: broken escape"))?);
    }
    Ok(value)
}

fn cut(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_takes_its_one_parameter() {
        assert_eq!(window(None), Ok(Window::Hour));
        assert_eq!(window(Some("window=24h")), Ok(Window::Day));
        assert!(window(Some("window=7d")).unwrap_err().contains("expected 1h or 24h"));
        assert!(window(Some("since=1h")).unwrap_err().contains("unknown; known: window"));
        assert_eq!(limit(Some("limit=10")), Ok(10));
        assert_eq!(limit(Some("")), Ok(50));
        for bad in ["limit=0", "limit=201", "limit=ten", "limit=1&limit=2"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
