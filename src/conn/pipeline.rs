//! HTTP/1.1 pipelining (RFC 9112 §9.3.2) on top of Pingora 0.9.1's own support: Pingora
//! parses a request from the bytes it read past the end of the previous one (the "pipelined
//! prefix", carried in `HttpPersistentSettings`), and answers requests one after another.
//!
//! The keep-alive loop must know whether such bytes exist: if so, the next request is already
//! here and the loop must not wait for the socket; and the header deadline must see those
//! bytes. Pingora 0.9.1 keeps the prefix private and offers no getter, so it is read from the
//! settings' `Debug` output (which prints it as a byte-string literal). Only requests after
//! which bytes arrived past the header end pay for this; a change in that format makes the
//! unit test below fail. Re-check on a Pingora upgrade: a getter would replace all of this.

use pingora::apps::HttpPersistentSettings;

/// The bytes Pingora read past the end of the previous request, if any.
pub(super) fn pipelined_prefix(settings: &HttpPersistentSettings) -> Option<Vec<u8>> {
    let text = format!("{settings:?}");
    let start = text.find("pipelined_prefix: Some(b\"")? + "pipelined_prefix: Some(b\"".len();
    unescape(&text[start..]).filter(|b| !b.is_empty())
}

/// Reads a Rust byte-string literal body (as `bytes` prints one) up to its closing quote.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.bytes();
    while let Some(c) = chars.next() {
        match c {
            b'"' => return Some(out),
            b'\\' => match chars.next()? {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'\\' => out.push(b'\\'),
                b'"' => out.push(b'"'),
                b'x' => {
                    let hi = (chars.next()? as char).to_digit(16)?;
                    let lo = (chars.next()? as char).to_digit(16)?;
                    out.push((hi * 16 + lo) as u8);
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use pingora::protocols::http::ServerSession;

    async fn settings() -> HttpPersistentSettings {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let stream: pingora::protocols::Stream =
            Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
        HttpPersistentSettings::for_session(&ServerSession::new_http1(stream))
    }

    #[tokio::test]
    async fn the_prefix_is_read_back_exactly_whatever_its_bytes() {
        assert_eq!(pipelined_prefix(&settings().await), None);
        let every_byte: Vec<u8> = (0..=255u8).chain(*b"GET / HTTP/1.1\r\n\r\n\"\\").collect();
        let mut s = settings().await;
        s.set_pipelined_prefix(BytesMut::from(&every_byte[..]));
        assert_eq!(pipelined_prefix(&s), Some(every_byte));
        let mut empty = settings().await;
        empty.set_pipelined_prefix(BytesMut::new());
        assert_eq!(pipelined_prefix(&empty), None);
    }
}
