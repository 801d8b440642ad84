//! Turns the gateway's own answers (documents and errors) into bytes on the client session.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::error::GatewayError;

/// Headers every locally produced answer carries besides content type and length.
pub type ExtraHeaders<'a> = &'a [(&'static str, String)];

/// Writes a complete JSON answer.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    headers: ExtraHeaders<'_>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in headers {
        resp.insert_header(*name, value.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Writes an error answer with its status, JSON body and own headers (`Retry-After`, …).
pub async fn error(
    session: &mut Session,
    err: &GatewayError,
    headers: ExtraHeaders<'_>,
) -> Result<()> {
    let mut all = err.extra_headers();
    all.extend(headers.iter().cloned());
    json(session, err.status(), Bytes::from(err.body()), &all).await
}
