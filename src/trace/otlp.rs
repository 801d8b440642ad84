//! Spans recorded straight into OTLP protobuf (`opentelemetry.proto.trace.v1.Span`), and a
//! batch of them wrapped as one OTLP/HTTP body (`ExportTraceServiceRequest`).
//!
//! Neither the SDK's spans nor `opentelemetry-otlp`'s encoder: the SDK (span builders,
//! `SpanData`, every attribute kept as a `KeyValue` until export and dropped after) plus the
//! exporter (each span converted into the generated message types, grouped through a hash
//! map, each nested length recomputed by prost at every level) cost about half the proxying
//! itself per sampled request (docs/BENCHMARKS.md). Here an attribute is encoded the moment it is set, into the span's own buffer; a
//! span is written whole when it ends; a batch is those bytes behind one resource and scope
//! header. `opentelemetry-proto`'s generated types decode it back in the tests.
//!
//! The protobuf primitives, the span record and the batch header change together.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceId};
use opentelemetry::{Array, KeyValue, Value};
use prost::encoding::encoded_len_varint;

/// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the span says whether its parent is remote, and whether it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// A varint, written in one `extend` (prost's `encode_varint` goes through `BufMut` a byte at
/// a time, with a capacity check each: a tenth of the whole encoding's instructions).
#[inline(always)]
fn encode_varint(mut v: u64, buf: &mut Vec<u8>) {
    if v < 0x80 {
        buf.push(v as u8);
        return;
    }
    let mut b = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        b[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    b[n] = v as u8;
    buf.extend_from_slice(&b[..=n]);
}

#[inline(always)]
fn key(field: u32, wire: u32, buf: &mut Vec<u8>) {
    encode_varint(u64::from(field << 3 | wire), buf);
}

/// Bytes a field's key takes (one for field numbers below 16: all but a span's `flags`).
const KEY: usize = 1;

#[inline(always)]
fn len_field(n: usize) -> usize {
    KEY + encoded_len_varint(n as u64) + n
}

#[inline(always)]
fn bytes(field: u32, b: &[u8], buf: &mut Vec<u8>) {
    key(field, LEN, buf);
    encode_varint(b.len() as u64, buf);
    buf.extend_from_slice(b);
}

/// A string field, left out when empty (proto3's default).
#[inline(always)]
fn string(field: u32, s: &str, buf: &mut Vec<u8>) {
    if !s.is_empty() {
        bytes(field, s.as_bytes(), buf);
    }
}

#[inline(always)]
fn string_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        len_field(s.len())
    }
}

#[inline(always)]
fn uint(field: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        key(field, VARINT, buf);
        encode_varint(v, buf);
    }
}

#[inline(always)]
fn uint_len(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        KEY + encoded_len_varint(v)
    }
}

#[inline(always)]
fn fixed64(field: u32, v: u64, buf: &mut Vec<u8>) {
    key(field, FIXED64, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn fixed32(field: u32, v: u32, buf: &mut Vec<u8>) {
    key(field, FIXED32, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// common.v1.AnyValue: string 1, bool 2, int 3, double 4, array 5 (ArrayValue { values 1 }).
#[inline(always)]
fn any_len(v: &Value) -> usize {
    match v {
        Value::Bool(_) => KEY + 1,
        Value::I64(i) => KEY + encoded_len_varint(*i as u64),
        Value::F64(_) => KEY + 8,
        Value::String(s) => len_field(s.as_str().len()),
        Value::Array(a) => len_field(array_len(a)),
        _ => 0,
    }
}

#[inline]
fn write_any(v: &Value, buf: &mut Vec<u8>) {
    match v {
        Value::Bool(b) => {
            key(2, VARINT, buf);
            buf.push(u8::from(*b));
        }
        Value::I64(i) => {
            key(3, VARINT, buf);
            encode_varint(*i as u64, buf);
        }
        Value::F64(f) => fixed64(4, f.to_bits(), buf),
        Value::String(s) => bytes(1, s.as_str().as_bytes(), buf),
        Value::Array(a) => {
            key(5, LEN, buf);
            encode_varint(array_len(a) as u64, buf);
            write_array(a, buf);
        }
        _ => {}
    }
}

/// An array's elements, each written as its own `AnyValue` message.
fn elements(a: &Array) -> Box<dyn Iterator<Item = Value> + '_> {
    match a {
        Array::Bool(v) => Box::new(v.iter().map(|b| Value::Bool(*b))),
        Array::I64(v) => Box::new(v.iter().map(|i| Value::I64(*i))),
        Array::F64(v) => Box::new(v.iter().map(|f| Value::F64(*f))),
        Array::String(v) => Box::new(v.iter().map(|s| Value::String(s.clone()))),
        _ => Box::new(std::iter::empty()),
    }
}

fn array_len(a: &Array) -> usize {
    elements(a).map(|v| len_field(any_len(&v))).sum()
}

fn write_array(a: &Array, buf: &mut Vec<u8>) {
    for v in elements(a) {
        key(1, LEN, buf);
        encode_varint(any_len(&v) as u64, buf);
        write_any(&v, buf);
    }
}

// common.v1.KeyValue: key 1, value 2.
#[inline(always)]
fn kv_len(kv: &KeyValue) -> usize {
    string_len(kv.key.as_str()) + len_field(any_len(&kv.value))
}

/// A `KeyValue` message as field `field`: `key`, then an `AnyValue` of `value_len` bytes
/// that `value` writes.
#[inline]
fn write_kv(
    field: u32,
    key: &str,
    value_len: usize,
    value: impl FnOnce(&mut Vec<u8>),
    buf: &mut Vec<u8>,
) {
    self::key(field, LEN, buf);
    encode_varint((string_len(key) + len_field(value_len)) as u64, buf);
    string(1, key, buf);
    self::key(2, LEN, buf);
    encode_varint(value_len as u64, buf);
    value(buf);
}

fn write_attribute(field: u32, kv: &KeyValue, buf: &mut Vec<u8>) {
    let value = &kv.value;
    write_kv(
        field,
        kv.key.as_str(),
        any_len(value),
        |b| write_any(value, b),
        buf,
    );
}

fn write_attributes(field: u32, attributes: &[KeyValue], buf: &mut Vec<u8>) {
    for kv in attributes {
        write_attribute(field, kv, buf);
    }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The most attributes a span (or an event, or a link) keeps, and the most events and links a
/// span keeps: the SDK's default limits. What is over them is counted as dropped.
const LIMIT: u32 = 128;

/// One span being recorded: its fixed fields, and its attributes, events and links already
/// encoded as they came.
#[derive(Debug)]
pub(crate) struct Record {
    trace: TraceId,
    span: SpanId,
    parent: SpanId,
    parent_remote: bool,
    state: String,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: u64,
    /// Ends where it starts: a step that was decided, not run.
    instant: bool,
    /// Encoded `attributes` fields (9), `events` (11), `links` (13).
    attributes: Vec<u8>,
    events: Vec<u8>,
    links: Vec<u8>,
    counts: [u32; 3],
    dropped: [u32; 3],
    status: Status,
}

impl Record {
    /// A sampled span of `sc`, child of `parent` (the invalid id for a root), started at
    /// `start`.
    pub(crate) fn new(
        sc: &SpanContext,
        parent: SpanId,
        parent_remote: bool,
        kind: SpanKind,
        name: Cow<'static, str>,
        start: SystemTime,
    ) -> Record {
        Record {
            trace: sc.trace_id(),
            span: sc.span_id(),
            parent,
            parent_remote,
            state: sc.trace_state().header(),
            kind,
            name,
            start: nanos(start),
            instant: false,
            attributes: Vec::with_capacity(512),
            events: Vec::new(),
            links: Vec::new(),
            counts: [0; 3],
            dropped: [0; 3],
            status: Status::Unset,
        }
    }

    /// Makes the span end where it starts, whenever it is written.
    pub(crate) fn instant(&mut self) {
        self.instant = true;
    }

    /// Whether one more of kind `i` (0 attributes, 1 events, 2 links) fits the limit.
    fn room(&mut self, i: usize) -> bool {
        if self.counts[i] < LIMIT {
            self.counts[i] += 1;
            true
        } else {
            self.dropped[i] += 1;
            false
        }
    }

    /// Adds `kv` (a later value for the same key is a second entry: the phases never repeat
    /// one, and a collector keeps the last).
    pub(crate) fn attribute(&mut self, kv: &KeyValue) {
        if self.room(0) {
            write_attribute(9, kv, &mut self.attributes);
        }
    }

    /// Adds a string attribute borrowed from the request: encoded at once, never copied into
    /// a `String` of its own.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        if self.room(0) {
            // AnyValue { string_value 1 }.
            let any = len_field(value.len());
            write_kv(
                9,
                key,
                any,
                |b| bytes(1, value.as_bytes(), b),
                &mut self.attributes,
            );
        }
    }

    /// Names the span.
    pub(crate) fn name(&mut self, name: Cow<'static, str>) {
        self.name = name;
    }

    /// Adds each of `attributes`.
    pub(crate) fn attributes(&mut self, attributes: &[KeyValue]) {
        for kv in attributes {
            self.attribute(kv);
        }
    }

    /// Adds an event at `at`.
    pub(crate) fn event(&mut self, name: &str, at: SystemTime, attributes: &[KeyValue]) {
        if !self.room(1) {
            return;
        }
        // Event: time 1, name 2, attributes 3, dropped 4.
        let kept = &attributes[..attributes.len().min(LIMIT as usize)];
        let body = KEY
            + 8
            + string_len(name)
            + kept.iter().map(|kv| len_field(kv_len(kv))).sum::<usize>()
            + uint_len((attributes.len() - kept.len()) as u64);
        let buf = &mut self.events;
        key(11, LEN, buf);
        encode_varint(body as u64, buf);
        fixed64(1, nanos(at), buf);
        string(2, name, buf);
        write_attributes(3, kept, buf);
        uint(4, (attributes.len() - kept.len()) as u64, buf);
    }

    /// Adds a link to `to`.
    pub(crate) fn link(&mut self, to: &SpanContext, attributes: &[KeyValue]) {
        if !self.room(2) {
            return;
        }
        // Link: trace id 1, span id 2, state 3, attributes 4, dropped 5, flags 6.
        let state = to.trace_state().header();
        let kept = &attributes[..attributes.len().min(LIMIT as usize)];
        let mut flags = u32::from(to.trace_flags().to_u8()) | HAS_IS_REMOTE;
        if to.is_remote() {
            flags |= IS_REMOTE;
        }
        let body = len_field(16)
            + len_field(8)
            + string_len(&state)
            + kept.iter().map(|kv| len_field(kv_len(kv))).sum::<usize>()
            + uint_len((attributes.len() - kept.len()) as u64)
            + KEY
            + 4;
        let buf = &mut self.links;
        key(13, LEN, buf);
        encode_varint(body as u64, buf);
        bytes(1, &to.trace_id().to_bytes(), buf);
        bytes(2, &to.span_id().to_bytes(), buf);
        string(3, &state, buf);
        write_attributes(4, kept, buf);
        uint(5, (attributes.len() - kept.len()) as u64, buf);
        fixed32(6, flags, buf);
    }

    /// Sets the status.
    pub(crate) fn status(&mut self, status: Status) {
        self.status = status;
    }

    /// The span, ended at `end`, as a `spans` entry of `ScopeSpans` (field 2: key, length,
    /// body), appended to `out`.
    pub(crate) fn write(&self, end: SystemTime, out: &mut Vec<u8>) {
        let (message, code) = match &self.status {
            Status::Unset => ("", 0),
            Status::Ok => ("", 1),
            Status::Error { description } => (description.as_ref(), 2),
        };
        let status = string_len(message) + uint_len(code);
        let has_parent = self.parent != SpanId::INVALID;
        // `flags` is field 16: a two-byte key.
        let body = len_field(16)
            + len_field(8)
            + string_len(&self.state)
            + if has_parent { len_field(8) } else { 0 }
            + string_len(&self.name)
            + uint_len(kind(&self.kind))
            + 2 * (KEY + 8)
            + self.attributes.len()
            + uint_len(u64::from(self.dropped[0]))
            + self.events.len()
            + uint_len(u64::from(self.dropped[1]))
            + self.links.len()
            + uint_len(u64::from(self.dropped[2]))
            + len_field(status)
            + 2
            + 4;
        out.reserve(len_field(body));
        key(2, LEN, out);
        encode_varint(body as u64, out);
        bytes(1, &self.trace.to_bytes(), out);
        bytes(2, &self.span.to_bytes(), out);
        string(3, &self.state, out);
        if has_parent {
            bytes(4, &self.parent.to_bytes(), out);
        }
        string(5, &self.name, out);
        uint(6, kind(&self.kind), out);
        fixed64(7, self.start, out);
        fixed64(8, if self.instant { self.start } else { nanos(end) }, out);
        out.extend_from_slice(&self.attributes);
        uint(10, u64::from(self.dropped[0]), out);
        out.extend_from_slice(&self.events);
        uint(12, u64::from(self.dropped[1]), out);
        out.extend_from_slice(&self.links);
        uint(14, u64::from(self.dropped[2]), out);
        key(15, LEN, out);
        encode_varint(status as u64, out);
        string(2, message, out);
        uint(3, code, out);
        // Sampled (the only spans recorded), and whether the parent is remote.
        let mut flags = 1 | HAS_IS_REMOTE;
        if self.parent_remote {
            flags |= IS_REMOTE;
        }
        encode_varint(u64::from(16 << 3 | FIXED32), out);
        out.extend_from_slice(&flags.to_le_bytes());
    }
}

/// The process's resource and scope, encoded once; each batch is written around them.
#[derive(Debug)]
pub(crate) struct Encoder {
    /// `Resource { attributes }`, the message body.
    resource: Vec<u8>,
    /// `InstrumentationScope { name, version }`, the message body.
    scope: Vec<u8>,
}

impl Encoder {
    /// An encoder for spans of `resource` from the instrumentation scope `scope`.
    pub(crate) fn new(resource: &[KeyValue], scope: &str, version: &str) -> Encoder {
        let mut r = Vec::new();
        write_attributes(1, resource, &mut r);
        let mut s = Vec::new();
        string(1, scope, &mut s);
        string(2, version, &mut s);
        Encoder {
            resource: r,
            scope: s,
        }
    }

    /// Bytes to leave free at the front of a batch buffer for [`Encoder::request`]'s header
    /// (two lengths of at most five bytes each, with their keys, and the two messages).
    pub(crate) fn header_room(&self) -> usize {
        2 * (KEY + 5) + len_field(self.resource.len()) + len_field(self.scope.len())
    }

    /// One `ExportTraceServiceRequest` of the spans in `batch` after its first
    /// [`Encoder::header_room`] bytes (entries written by [`Record::write`]): the header is
    /// written into that room, so the spans are sent where they lie, never copied again.
    pub(crate) fn request(&self, mut batch: Vec<u8>) -> bytes::Bytes {
        let room = self.header_room();
        // ScopeSpans { scope 1, spans 2 }; ResourceSpans { resource 1, scope_spans 2 }.
        let scope_spans = len_field(self.scope.len()) + batch.len() - room;
        let resource_spans = len_field(self.resource.len()) + len_field(scope_spans);
        let mut head = Vec::with_capacity(room);
        key(1, LEN, &mut head);
        encode_varint(resource_spans as u64, &mut head);
        bytes(1, &self.resource, &mut head);
        key(2, LEN, &mut head);
        encode_varint(scope_spans as u64, &mut head);
        bytes(1, &self.scope, &mut head);
        let at = room - head.len();
        batch[at..room].copy_from_slice(&head);
        bytes::Bytes::from(batch).slice(at..)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{TraceFlags, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn record(name: &'static str, parent: u64, status: Status) -> Record {
        let sc = SpanContext::new(
            TraceId::from_bytes([7; 16]),
            SpanId::from_bytes([1; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut r = Record::new(
            &sc,
            SpanId::from(parent),
            parent != 0,
            SpanKind::Server,
            Cow::Borrowed(name),
            at(1000),
        );
        r.attributes(&[
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.response.status_code", 503),
            KeyValue::new("gateway.ratio", 0.5),
            KeyValue::new("gateway.cached", true),
            KeyValue::new("negative", -1),
            KeyValue::new(
                "list",
                Value::Array(Array::String(vec!["a".into(), "bc".into()])),
            ),
            KeyValue::new("empty", ""),
        ]);
        r.event("backoff", at(5), &[KeyValue::new("gateway.backoff_ms", 25)]);
        let leader = SpanContext::new(
            TraceId::from_bytes([9; 16]),
            SpanId::from_bytes([3; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).expect("state"),
        );
        r.link(
            &leader,
            &[KeyValue::new("gateway.link", "single_flight_leader")],
        );
        r.status(status);
        r
    }

    #[test]
    fn a_batch_decodes_back_field_by_field_with_the_generated_types() {
        let enc = Encoder::new(
            &[KeyValue::new("service.name", "gateway")],
            "gateway",
            "1.2.3",
        );
        let mut spans = vec![0; enc.header_room()];
        let mut first = record("GET /api/", 0x0a0b, Status::error("503"));
        first.str("url.path", "/api/x");
        first.write(at(2000), &mut spans);
        record("request", 0, Status::Unset).write(at(2000), &mut spans);
        let req = ExportTraceServiceRequest::decode(enc.request(spans)).expect("decodes");
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let attrs = &rs.resource.as_ref().expect("resource").attributes;
        assert_eq!(attrs[0].key, "service.name");
        assert_eq!(rs.scope_spans.len(), 1);
        let ss = &rs.scope_spans[0];
        let scope = ss.scope.as_ref().expect("scope");
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("gateway", "1.2.3")
        );
        assert_eq!(ss.spans.len(), 2);
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.span_id, vec![1; 8]);
        assert_eq!(s.parent_span_id, 0x0a0bu64.to_be_bytes().to_vec());
        assert_eq!(s.name, "GET /api/");
        assert_eq!(s.kind, 2);
        assert_eq!(s.start_time_unix_nano, 1_000_000_000);
        assert_eq!(s.end_time_unix_nano, 2_000_000_000);
        assert_eq!(s.flags, 0x301);
        let v = |i: usize| s.attributes[i].value.as_ref().and_then(|v| v.value.clone());
        assert_eq!(s.attributes[0].key, "http.request.method");
        assert_eq!(v(0), Some(Any::StringValue("GET".into())));
        assert_eq!(v(1), Some(Any::IntValue(503)));
        assert_eq!(v(2), Some(Any::DoubleValue(0.5)));
        assert_eq!(v(3), Some(Any::BoolValue(true)));
        assert_eq!(v(4), Some(Any::IntValue(-1)));
        let Some(Any::ArrayValue(list)) = v(5) else {
            panic!("array expected")
        };
        let items: Vec<_> = list.values.iter().map(|a| a.value.clone()).collect();
        assert_eq!(
            items,
            vec![
                Some(Any::StringValue("a".into())),
                Some(Any::StringValue("bc".into()))
            ]
        );
        assert_eq!(v(6), Some(Any::StringValue(String::new())));
        assert_eq!(s.attributes[7].key, "url.path");
        assert_eq!(v(7), Some(Any::StringValue("/api/x".into())));
        let e = &s.events[0];
        assert_eq!((e.name.as_str(), e.time_unix_nano), ("backoff", 5_000_000));
        assert_eq!(e.attributes[0].key, "gateway.backoff_ms");
        let l = &s.links[0];
        assert_eq!(
            (l.trace_id.clone(), l.span_id.clone()),
            (vec![9; 16], vec![3; 8])
        );
        assert_eq!(l.trace_state, "vendor=x");
        assert_eq!(l.flags, 0x301);
        assert_eq!(l.attributes[0].key, "gateway.link");
        let st = s.status.as_ref().expect("status");
        assert_eq!((st.code, st.message.as_str()), (2, "503"));
        let s = &ss.spans[1];
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.flags, 0x101);
        assert_eq!(s.status.as_ref().map(|s| s.code), Some(0));
    }

    #[test]
    fn attributes_over_the_limit_are_counted_as_dropped() {
        let mut r = record("x", 0, Status::Unset);
        for i in 0..200 {
            r.attribute(&KeyValue::new("n", i64::from(i)));
        }
        let enc = Encoder::new(&[], "gateway", "");
        let mut spans = vec![0; enc.header_room()];
        r.write(at(2000), &mut spans);
        let req = ExportTraceServiceRequest::decode(enc.request(spans)).expect("decodes");
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(s.attributes.len(), 128);
        assert_eq!(s.dropped_attributes_count, 7 + 200 - 128);
    }

    #[test]
    fn a_large_batch_and_a_long_resource_fit_the_room_left_for_the_header() {
        let name = "s".repeat(300);
        let enc = Encoder::new(
            &[KeyValue::new("service.name", name.clone())],
            "gateway",
            "9",
        );
        let mut spans = vec![0; enc.header_room()];
        for _ in 0..600 {
            record("GET /api/", 7, Status::Unset).write(at(2000), &mut spans);
        }
        let req = ExportTraceServiceRequest::decode(enc.request(spans)).expect("decodes");
        let rs = &req.resource_spans[0];
        assert_eq!(rs.scope_spans[0].spans.len(), 600);
        let service = rs.resource.as_ref().expect("resource").attributes[0]
            .value
            .clone();
        assert_eq!(service.and_then(|v| v.value), Some(Any::StringValue(name)));
    }
}
