//! Images in requests: the media types the providers take, base64 as they read it, and what an
//! image costs in input tokens.
//!
//! The simulator never looks at the pixels, so every image of a provider costs the same fixed
//! number of tokens: close to what that provider charges for a typical photo, and easy to
//! assert in tests.

/// Input tokens of one OpenAI image sent with `detail: "low"` (OpenAI's fixed price for it).
pub const OPENAI_LOW_DETAIL_TOKENS: u32 = 85;

/// Input tokens of one OpenAI image with `detail` `"high"`, `"auto"` or unset: the price of a
/// 1024×1024 image in high detail (85 + 4 tiles × 170).
pub const OPENAI_HIGH_DETAIL_TOKENS: u32 = 765;

/// Input tokens of one Anthropic image: about a 1092×1092 image (width × height / 750), the
/// largest square that is not downscaled.
pub const ANTHROPIC_IMAGE_TOKENS: u32 = 1600;

/// Input tokens of one Gemini image (inline or by file): Gemini's price for an image up to
/// 384 px on both sides.
pub const GEMINI_IMAGE_TOKENS: u32 = 258;

/// Image media types every provider takes inline.
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Whether `media_type` is an image type the providers take.
pub fn is_supported_image(media_type: &str) -> bool {
    IMAGE_TYPES.contains(&media_type.to_ascii_lowercase().as_str())
}

/// A `data:` URL split into its media type and base64 payload.
#[derive(Debug, PartialEq, Eq)]
pub struct DataUrl<'a> {
    pub media_type: &'a str,
    pub data: &'a str,
}

/// Reads `data:<media type>;base64,<data>`; `None` for anything else (including data URLs that
/// are not base64, which no provider takes for images).
pub fn data_url(url: &str) -> Option<DataUrl<'_>> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    let media_type = header.strip_suffix(";base64")?;
    Some(DataUrl { media_type, data })
}

/// Decodes base64 in the standard or the URL-safe alphabet (Google's JSON mapping reads both for
/// `bytes` fields, and its Python SDK writes the URL-safe one), padding optional.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2
        || (text.len() != trimmed.len() && !text.len().is_multiple_of(4))
    {
        return None;
    }
    if trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() / 4 * 3 + 2);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in trimmed.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // Only the low byte is kept: the mask makes the truncation explicit.
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Encodes in the standard base64 alphabet, with padding, as the providers write bytes.
pub fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = chunk.iter().enumerate().fold(0u32, |group, (index, byte)| {
            group | (u32::from(*byte) << (16 - 8 * index))
        });
        for index in 0..4 {
            if index <= chunk.len() {
                let sextet = (group >> (18 - 6 * index)) & 0x3f;
                out.push(char::from(ALPHABET[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `text` is non-empty base64 that decodes: what the providers check of inline image
/// data before anything else.
pub fn is_base64_payload(text: &str) -> bool {
    !text.is_empty() && decode_base64(text).is_some_and(|bytes| !bytes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_in_both_alphabets() {
        for bytes in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xfb\xff\xbf\x00"] {
            let encoded = encode_base64(bytes);
            assert_eq!(decode_base64(&encoded).as_deref(), Some(bytes), "{encoded}");
            let url_safe = encoded.replace('+', "-").replace('/', "_");
            let unpadded = url_safe.trim_end_matches('=');
            assert_eq!(
                decode_base64(unpadded).as_deref(),
                Some(bytes),
                "{unpadded}"
            );
        }
        assert_eq!(encode_base64(b"\xfb\xff\xbf"), "+/+/");
    }

    #[test]
    fn malformed_base64_is_refused() {
        for text in ["a", "ab=c", "abc===", "ab!c", "ab c", "abcde"] {
            assert_eq!(decode_base64(text), None, "{text}");
        }
        assert!(!is_base64_payload(""));
    }

    #[test]
    fn data_urls_are_split() {
        assert_eq!(
            data_url("data:image/png;base64,iVBO"),
            Some(DataUrl {
                media_type: "image/png",
                data: "iVBO"
            })
        );
        assert_eq!(data_url("data:image/png,raw"), None);
        assert_eq!(data_url("https://example.com/a.png"), None);
        assert!(is_supported_image("image/JPEG"));
        assert!(!is_supported_image("image/bmp"));
    }
}
