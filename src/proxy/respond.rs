//! The gateway's own answers: documents and errors turned into bytes on the client session,
//! and the mapping from a Pingora proxying error to the error the client is shown.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::compress::{Compressor, Negotiated};
use crate::conn::report::{ClientEvent, Phase};
use crate::error::GatewayError;

/// Headers every locally produced answer carries besides content type and length: values, not
/// strings, so that a number or a static text reaches the answer without a copy.
pub(crate) type ExtraHeaders<'a> = &'a [(&'static str, http::HeaderValue)];

/// Writes a complete JSON answer (`Cache-Control: no-store`).
pub(crate) async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    headers: ExtraHeaders<'_>,
) -> Result<()> {
    json_cached(session, status, body, headers, "no-store", None).await
}

/// How a local answer may be compressed: the policy, what the client accepts, and the name of
/// a cacheable document (its compressed copy is reused while it stays the same).
pub(crate) type Compress<'a> = Option<(&'a Compressor, Negotiated, Option<&'a str>)>;

/// Writes a complete JSON answer with its `Cache-Control`, compressed when `compress` allows.
pub(crate) async fn json_cached(
    session: &mut Session,
    status: u16,
    mut body: Bytes,
    headers: ExtraHeaders<'_>,
    cache_control: &str,
    compress: Compress<'_>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CACHE_CONTROL, cache_control)?;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("vary") {
            resp.append_header(*name, value.clone())?;
        } else {
            resp.insert_header(*name, value.clone())?;
        }
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    if let Some((c, accepted, memo_key)) = compress {
        let http2 = session.is_http2();
        if let Some(coding) = c.begin(accepted, head_only, http2, &mut resp, Some(body.len())) {
            if let Some(out) = c.whole(coding, &body, memo_key) {
                body = out;
                // The whole body is at hand: its length is known, no chunking needed.
                resp.remove_header(&http::header::TRANSFER_ENCODING);
            } else {
                resp.remove_header(&http::header::CONTENT_ENCODING);
            }
        }
    }
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Writes an error answer with its status, JSON body and own headers (`Retry-After`, …).
pub(crate) async fn error(
    session: &mut Session,
    err: &GatewayError,
    headers: ExtraHeaders<'_>,
) -> Result<()> {
    if super::grpc::is_grpc(session.req_header()) {
        // A gRPC client reads grpc-status, not HTTP statuses or JSON.
        return super::grpc::error(session, err, headers).await;
    }
    let mut all: Vec<(&'static str, http::HeaderValue)> = err
        .extra_headers()
        .into_iter()
        .filter_map(|(n, v)| Some((n, http::HeaderValue::try_from(v).ok()?)))
        .collect();
    all.extend(headers.iter().cloned());
    json(session, err.status(), Bytes::from(err.body()), &all).await
}

/// Whether the final response header went out (a `100 Continue` is not an answer).
pub(crate) fn answered(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|r| !r.status.is_informational())
}

/// What `upstream_peer` says when the gateway itself decides the answer (503 with no healthy
/// backend, 504 past the route's total timeout): an answer given on purpose, counted in the
/// metrics and the access log, not an ERROR line per request.
pub(crate) const NO_HEALTHY_BACKEND: &str = "no healthy backend";
/// The route's total timeout passed before a try could start.
pub(crate) const TOTAL_TIMEOUT: &str = "total timeout";

/// Whether `e` is one of the answers the gateway decided itself (see [`NO_HEALTHY_BACKEND`]).
pub(crate) fn decided_here(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::HTTPStatus(503 | 504))
        && e.context
            .as_ref()
            .is_some_and(|c| matches!(c.as_str(), NO_HEALTHY_BACKEND | TOTAL_TIMEOUT))
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// A client that was too slow or went away, from the error that ended its request; `None`
/// for every other error. `answered`: the response header was already sent.
pub(crate) fn client_event(e: &Error, answered: bool) -> Option<ClientEvent> {
    if e.esource() != &ErrorSource::Downstream {
        return None;
    }
    let during = if answered {
        Phase::Response
    } else {
        Phase::Body
    };
    Some(match e.etype() {
        ErrorType::ReadTimedout => ClientEvent::Timeout(Phase::Body),
        ErrorType::WriteTimedout => ClientEvent::Timeout(Phase::Response),
        ErrorType::WriteError => ClientEvent::Aborted(Phase::Response),
        ErrorType::ReadError | ErrorType::ConnectionClosed => ClientEvent::Aborted(during),
        _ => return None,
    })
}

/// What the client is told when proxying failed with `e`; `None` when the client itself went
/// away (nobody to answer).
pub(crate) fn proxy_failure(e: &Error) -> Option<GatewayError> {
    Some(match (e.esource(), e.etype()) {
        (_, ErrorType::HTTPStatus(code)) if *code >= 500 => {
            GatewayError::BadGateway("upstream failed".into())
        }
        (ErrorSource::Upstream, _) if is_timeout(e) => {
            GatewayError::Timeout("the upstream did not answer in time".into())
        }
        (ErrorSource::Upstream, _) => {
            GatewayError::BadGateway("the upstream could not be reached or failed".into())
        }
        (
            ErrorSource::Downstream,
            ErrorType::ReadError
            | ErrorType::WriteError
            | ErrorType::ConnectionClosed
            | ErrorType::WriteTimedout,
        ) => return None,
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => GatewayError::RequestTimeout(
            "the request body stalled longer than the body read timeout".into(),
        ),
        (_, ErrorType::HTTPStatus(413)) => {
            GatewayError::PayloadTooLarge("request body larger than the route allows".into())
        }
        (ErrorSource::Downstream, _) => GatewayError::BadRequest("malformed request".into()),
        _ if is_timeout(e) => GatewayError::Timeout("the upstream did not answer in time".into()),
        _ => GatewayError::Internal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: Box<Error>) -> Option<u16> {
        proxy_failure(&e).map(|g| g.status())
    }

    #[test]
    fn answers_decided_here_are_not_errors() {
        use ErrorType::*;
        assert!(decided_here(&Error::explain(
            HTTPStatus(503),
            NO_HEALTHY_BACKEND
        )));
        assert!(decided_here(&Error::explain(
            HTTPStatus(504),
            TOTAL_TIMEOUT
        )));
        assert!(!decided_here(&Error::explain(
            HTTPStatus(503),
            "the backend said so"
        )));
        assert!(!decided_here(&Error::new_up(ConnectRefused)));
    }

    #[test]
    fn proxy_errors_map_to_what_the_client_is_told() {
        use ErrorType::*;
        assert_eq!(status(Error::new_up(ConnectTimedout)), Some(504));
        assert_eq!(status(Error::new_up(ReadTimedout)), Some(504));
        assert_eq!(status(Error::new_up(ConnectRefused)), Some(502));
        assert_eq!(status(Error::new_up(ConnectionClosed)), Some(502));
        assert_eq!(status(Error::new_up(HTTPStatus(503))), Some(502));
        assert_eq!(status(Error::new_down(ConnectionClosed)), None);
        assert_eq!(status(Error::new_down(ReadError)), None);
        assert_eq!(status(Error::new_down(InvalidHTTPHeader)), Some(400));
        assert_eq!(status(Error::new_down(ReadTimedout)), Some(408));
        assert_eq!(status(Error::new_down(WriteTimedout)), None);
        assert_eq!(status(Error::new(HTTPStatus(413))), Some(413));
        assert_eq!(status(Error::new(WriteTimedout)), Some(504));
        assert_eq!(status(Error::new(InternalError)), Some(500));
    }
}
