//! A minimal WebSocket client (RFC 6455) for the readers of
//! `inkstream load --mode fanout`.
//!
//! Why it exists: the benchmark runs next to the server on the same 2 cores,
//! so every microsecond the client spends per delivered message is taken
//! from the server it measures. A general client (tungstenite) costs ~1.7 µs
//! per message (frame object, UTF-8 check, an owned payload); this one reads
//! into one reused buffer per connection, parses the frame headers in place
//! and hands each text payload to the caller as a borrowed slice, with no
//! UTF-8 validation and no allocation.
//!
//! What it supports is what the fanout sends: unfragmented text and binary
//! frames, Ping (answered with a Pong), Pong and Close. A fragmented message,
//! a reserved opcode or reserved bit, or a masked server frame is a
//! protocol error. It does not check `Sec-WebSocket-Accept` (the server is
//! ours; a 101 is enough) and negotiates no extension.

use super::LoadError;
use std::hash::BuildHasher;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The read buffer of each connection; it grows only for a larger frame.
const READ_BUFFER: usize = 64 * 1024;
/// The largest frame accepted (the fanout's are far smaller).
const MAX_FRAME: u64 = 16 * 1024 * 1024;
/// Below this much free room at the tail, pending bytes move to the front.
const MIN_READ: usize = 4 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A server frame the client does not accept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(
        "websocket protocol error: fragmented message (FIN=0, opcode {0:#x}); the fanout never fragments"
    )]
    Fragmented(u8),
    #[error("websocket protocol error: continuation frame outside a fragmented message")]
    Continuation,
    #[error("websocket protocol error: reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("websocket protocol error: reserved bits {0:#x} set (no extension was negotiated)")]
    ReservedBits(u8),
    #[error("websocket protocol error: masked frame from the server")]
    Masked,
    #[error(
        "websocket protocol error: control frame (opcode {opcode:#x}) of {len} bytes (max 125)"
    )]
    ControlTooLong { opcode: u8, len: u64 },
    #[error("websocket protocol error: frame of {0} bytes (max {max})", max = MAX_FRAME)]
    TooLarge(u64),
}

impl From<ProtocolError> for LoadError {
    fn from(e: ProtocolError) -> Self {
        LoadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// A complete frame at the start of a buffer: its payload is
/// `buf[header..header + len]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub header: usize,
    pub len: usize,
}

/// Parses the server frame at the start of `buf`: `Ok(None)` until all of
/// it (header and payload) is there.
pub fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, ProtocolError> {
    let Some(&b0) = buf.first() else {
        return Ok(None);
    };
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits(b0 & 0x70));
    }
    match opcode {
        OP_CONTINUATION => return Err(ProtocolError::Continuation),
        OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(ProtocolError::ReservedOpcode(opcode)),
    }
    if b0 & 0x80 == 0 {
        return Err(ProtocolError::Fragmented(opcode));
    }
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 {
        return Err(ProtocolError::Masked);
    }
    let (header, len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                (10, u64::from_be_bytes(n))
            }
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    if opcode >= OP_CLOSE && len > 125 {
        return Err(ProtocolError::ControlTooLong { opcode, len });
    }
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    // Fits: MAX_FRAME is far below usize::MAX.
    let len = len as usize;
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        opcode,
        header,
        len,
    }))
}

/// Appends a client frame (FIN set, masked with `mask`, RFC 6455 §5.3).
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// Why [`RawWs::read_batch`] stopped for good.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The caller's callback asked to stop.
    Stopped,
    /// The server sent Close (answered with a Close).
    Closed,
    /// The server hung up without a Close.
    Eof,
    /// Nothing arrived for the idle timeout.
    Idle,
}

/// The bytes read and not yet handled, and the frames to send back.
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
    /// Pending bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Pongs (and a Close reply) to write after the batch.
    out: Vec<u8>,
    mask: [u8; 4],
}

impl FrameBuf {
    pub fn new(capacity: usize, mask: [u8; 4]) -> FrameBuf {
        FrameBuf {
            buf: vec![0u8; capacity.max(16)],
            start: 0,
            end: 0,
            out: Vec::new(),
            mask,
        }
    }

    /// Room to read into (at least one byte): pending bytes move to the
    /// front when the tail is short, and the buffer grows when one frame
    /// fills all of it.
    pub fn room(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < MIN_READ && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // One frame larger than the buffer (bounded by MAX_FRAME).
            self.buf.resize(self.buf.len() * 2, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`FrameBuf::room`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Handles every complete frame pending: text payloads go to `on_text`
    /// (which returns `false` to stop after that frame), a Ping queues its
    /// Pong, a Close queues the Close reply and ends. `Ok(None)`: all
    /// complete frames handled, the rest (if any) needs more bytes.
    pub fn drain(
        &mut self,
        on_text: &mut impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<End>, ProtocolError> {
        while let Some(frame) = parse_frame(&self.buf[self.start..self.end])? {
            let at = self.start + frame.header;
            let payload = &self.buf[at..at + frame.len];
            self.start = at + frame.len;
            match frame.opcode {
                // A text frame after which `on_text` goes on falls through to `_`.
                OP_TEXT if !on_text(payload) => return Ok(Some(End::Stopped)),
                OP_PING => encode_frame(&mut self.out, OP_PONG, payload, self.mask),
                OP_CLOSE => {
                    // Echo the status code only (RFC 6455 §5.5.1).
                    let code = payload.get(..2).unwrap_or_default();
                    encode_frame(&mut self.out, OP_CLOSE, code, self.mask);
                    return Ok(Some(End::Closed));
                }
                // Binary, Pong, and text read on: nothing more to do.
                _ => {}
            }
        }
        Ok(None)
    }
}

/// One upgraded connection to the WebSocket fanout.
#[derive(Debug)]
pub struct RawWs {
    stream: TcpStream,
    frames: FrameBuf,
}

impl RawWs {
    /// Connects and upgrades `path` (with `?token=` when given): anything
    /// but `101 Switching Protocols` is `Rejected`.
    pub async fn connect(addr: &str, token: Option<&str>, path: &str) -> Result<RawWs, LoadError> {
        let mut stream = super::ingest::tcp_connect(addr).await?;
        let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
        let key = base64_16(&random_bytes());
        let request = format!(
            "GET {path}{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mask = random_bytes();
        let mut frames = FrameBuf::new(READ_BUFFER, [mask[0], mask[1], mask[2], mask[3]]);
        let head_len = loop {
            if frames.end == frames.buf.len() {
                return Err(LoadError::HeadersTooLarge);
            }
            let n = stream.read(&mut frames.buf[frames.end..]).await?;
            if n == 0 {
                return Err(LoadError::Closed("connection"));
            }
            // Search from a little before the new bytes: `\r\n\r\n` may straddle reads.
            let from = frames.end.saturating_sub(3);
            frames.end += n;
            if let Some(i) = memchr::memmem::find(&frames.buf[from..frames.end], b"\r\n\r\n") {
                break from + i + 4;
            }
        };
        let head = &frames.buf[..head_len];
        if status_code(head) != Some(101) {
            let status = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let body = &frames.buf[head_len..frames.end];
            let body = &body[..body.len().min(200)];
            return Err(LoadError::Rejected {
                step: format!("websocket upgrade of {path}: expected 101 Switching Protocols"),
                reply: format!(
                    "got {} {}",
                    String::from_utf8_lossy(status),
                    String::from_utf8_lossy(body)
                ),
            });
        }
        // Frames the server sent right behind the head stay pending.
        frames.start = head_len;
        Ok(RawWs { stream, frames })
    }

    /// Connects to `/ws/analytics` and subscribes to `channel`, waiting for
    /// the `subscribed` reply (an `error` reply is `Rejected`).
    pub async fn subscribe(
        addr: &str,
        token: Option<&str>,
        channel: &str,
        idle: Duration,
    ) -> Result<RawWs, LoadError> {
        let mut ws = RawWs::connect(addr, token, "/ws/analytics").await?;
        let sub = format!(r#"{{"op":"subscribe","channel":"{channel}"}}"#);
        ws.send(OP_TEXT, sub.as_bytes()).await?;
        let mut refused = None;
        loop {
            let end = ws
                .read_batch(idle, |t| {
                    if memchr::memmem::find(t, br#""op":"subscribed""#).is_some() {
                        return false;
                    }
                    if memchr::memmem::find(t, br#""op":"error""#).is_some() {
                        refused = Some(String::from_utf8_lossy(t).into_owned());
                        return false;
                    }
                    true
                })
                .await?;
            match (end, refused.take()) {
                (None, _) => continue,
                (Some(End::Stopped), None) => return Ok(ws),
                (Some(End::Stopped), Some(reply)) => {
                    return Err(LoadError::Rejected {
                        step: "subscribe refused".into(),
                        reply,
                    });
                }
                (Some(end), _) => {
                    return Err(LoadError::Rejected {
                        step: "subscribe".into(),
                        reply: format!("no reply to the subscribe: {end:?}"),
                    });
                }
            }
        }
    }

    /// Sends one masked frame.
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        encode_frame(&mut frame, opcode, payload, self.frames.mask);
        self.stream.write_all(&frame).await
    }

    /// One batch: the complete frames pending, else one read (waiting at
    /// most `idle`) and the complete frames it brought. Text payloads go to
    /// `on_text` (`false` stops); Pings are answered. `Ok(None)`: call again.
    pub async fn read_batch(
        &mut self,
        idle: Duration,
        mut on_text: impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<End>, LoadError> {
        if let Some(end) = self.drain(&mut on_text).await? {
            return Ok(Some(end));
        }
        let room = self.frames.room();
        match tokio::time::timeout(idle, self.stream.read(room)).await {
            Err(_) => return Ok(Some(End::Idle)),
            Ok(Ok(0)) => return Ok(Some(End::Eof)),
            Ok(Ok(n)) => self.frames.filled(n),
            Ok(Err(e)) => return Err(e.into()),
        }
        self.drain(&mut on_text).await
    }

    /// [`FrameBuf::drain`], then writes the Pongs (or Close reply) it queued.
    async fn drain(
        &mut self,
        on_text: &mut impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<End>, LoadError> {
        let end = self.frames.drain(on_text)?;
        if !self.frames.out.is_empty() {
            let written = self.stream.write_all(&self.frames.out).await;
            self.frames.out.clear();
            // The Close reply is a courtesy: the server may be gone already.
            if end != Some(End::Closed) {
                written?;
            }
        }
        Ok(end)
    }
}

/// The status code of an HTTP/1.1 response head.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let code = line.split(|&b| b == b' ').nth(1)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// 16 bytes unpredictable enough for a `Sec-WebSocket-Key` nonce and a
/// frame mask (std's randomly keyed SipHash; each `RandomState` has new keys).
fn random_bytes() -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_mut(8).enumerate() {
        let n = std::collections::hash_map::RandomState::new().hash_one(i);
        half.copy_from_slice(&n.to_le_bytes());
    }
    out
}

/// Standard base64 (with padding) of 16 bytes: 24 characters.
fn base64_16(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    /// A server frame: FIN set, unmasked.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=0xFFFF => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn unmask(frame: &[u8], header: usize) -> Vec<u8> {
        let mask = &frame[header - 4..header];
        frame[header..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect()
    }

    /// Feeds `chunks` one read at a time; returns the text payloads, the
    /// bytes queued to send back and how it ended.
    fn feed(fb: &mut FrameBuf, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<End>) {
        let mut texts = Vec::new();
        let mut end = None;
        for chunk in chunks {
            let mut rest = *chunk;
            while !rest.is_empty() {
                let room = fb.room();
                let n = room.len().min(rest.len());
                room[..n].copy_from_slice(&rest[..n]);
                fb.filled(n);
                rest = &rest[n..];
                end = fb
                    .drain(&mut |t| {
                        texts.push(t.to_vec());
                        true
                    })
                    .expect("valid frames");
            }
        }
        (texts, end)
    }

    #[test]
    fn parses_a_7_bit_length() {
        let f = server_frame(OP_TEXT, b"hello");
        assert_eq!(
            parse_frame(&f),
            Ok(Some(Frame {
                opcode: OP_TEXT,
                header: 2,
                len: 5
            }))
        );
        assert_eq!(parse_frame(&f[..f.len() - 1]), Ok(None));
        let f = server_frame(OP_TEXT, &[b'a'; 125]);
        assert_eq!(f[1], 125);
        assert_eq!(parse_frame(&f).map(|f| f.map(|f| f.len)), Ok(Some(125)));
    }

    #[test]
    fn parses_a_16_bit_length() {
        let f = server_frame(OP_TEXT, &[b'x'; 300]);
        assert_eq!(f[1], 126);
        assert_eq!(
            parse_frame(&f),
            Ok(Some(Frame {
                opcode: OP_TEXT,
                header: 4,
                len: 300
            }))
        );
        assert_eq!(parse_frame(&f[..3]), Ok(None));
        assert_eq!(parse_frame(&f[..303]), Ok(None));
    }

    #[test]
    fn parses_a_64_bit_length() {
        let f = server_frame(OP_BINARY, &vec![7u8; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(
            parse_frame(&f),
            Ok(Some(Frame {
                opcode: OP_BINARY,
                header: 10,
                len: 70_000
            }))
        );
        assert_eq!(parse_frame(&f[..9]), Ok(None));
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        assert_eq!(
            parse_frame(&huge),
            Err(ProtocolError::TooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn a_frame_split_across_two_reads_at_every_byte() {
        let mut stream = server_frame(OP_TEXT, br#"{"op":"message","data":1}"#);
        stream.extend(server_frame(OP_PING, b"p"));
        stream.extend(server_frame(OP_TEXT, &[b'y'; 200]));
        stream.extend(server_frame(OP_TEXT, &[b'z'; 70_000]));
        let want: Vec<Vec<u8>> = vec![
            br#"{"op":"message","data":1}"#.to_vec(),
            vec![b'y'; 200],
            vec![b'z'; 70_000],
        ];
        let mut pong = Vec::new();
        encode_frame(&mut pong, OP_PONG, b"p", MASK);
        // Split points around the small frames, then a stride through the large one.
        let splits = (0..=300).chain((300..=stream.len()).step_by(997));
        for at in splits.chain([stream.len() - 1, stream.len()]) {
            for capacity in [READ_BUFFER, 16] {
                let mut fb = FrameBuf::new(capacity, MASK);
                let (texts, end) = feed(&mut fb, &[&stream[..at], &stream[at..]]);
                assert_eq!(texts, want, "split at {at}, buffer {capacity}");
                assert_eq!(end, None);
                assert_eq!(fb.out, pong, "split at {at}");
                assert_eq!(fb.start, fb.end);
            }
        }
    }

    #[test]
    fn a_frame_split_at_every_byte_in_a_small_stream() {
        let mut stream = server_frame(OP_TEXT, b"a");
        stream.extend(server_frame(OP_TEXT, &[b'b'; 126]));
        stream.extend(server_frame(OP_CLOSE, &1000u16.to_be_bytes()));
        for at in 0..=stream.len() {
            let mut fb = FrameBuf::new(READ_BUFFER, MASK);
            let (texts, end) = feed(&mut fb, &[&stream[..at], &stream[at..]]);
            assert_eq!(texts, vec![b"a".to_vec(), vec![b'b'; 126]], "split at {at}");
            assert_eq!(end, Some(End::Closed));
            let mut close = Vec::new();
            encode_frame(&mut close, OP_CLOSE, &1000u16.to_be_bytes(), MASK);
            assert_eq!(fb.out, close);
        }
    }

    #[test]
    fn stopping_keeps_the_frames_behind() {
        let mut stream = server_frame(OP_TEXT, b"first");
        stream.extend(server_frame(OP_TEXT, b"second"));
        let mut fb = FrameBuf::new(READ_BUFFER, MASK);
        let room = fb.room();
        room[..stream.len()].copy_from_slice(&stream);
        fb.filled(stream.len());
        assert_eq!(fb.drain(&mut |_| false), Ok(Some(End::Stopped)));
        let mut seen = Vec::new();
        assert_eq!(
            fb.drain(&mut |t| {
                seen.push(t.to_vec());
                true
            }),
            Ok(None)
        );
        assert_eq!(seen, vec![b"second".to_vec()]);
    }

    #[test]
    fn a_ping_is_answered_with_a_masked_pong() {
        let mut fb = FrameBuf::new(READ_BUFFER, MASK);
        let (texts, end) = feed(&mut fb, &[&server_frame(OP_PING, b"keepalive")]);
        assert!(texts.is_empty());
        assert_eq!(end, None);
        let pong = &fb.out;
        assert_eq!(pong[0], 0x80 | OP_PONG, "FIN + Pong");
        assert_eq!(pong[1], 0x80 | 9, "mask bit + length");
        assert_eq!(&pong[2..6], &MASK);
        assert_ne!(&pong[6..], b"keepalive", "payload masked");
        assert_eq!(unmask(pong, 6), b"keepalive");
    }

    #[test]
    fn client_frames_encode_16_and_64_bit_lengths() {
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, &[b'q'; 300], MASK);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 1, 44]);
        assert_eq!(unmask(&out, 8), vec![b'q'; 300]);
        out.clear();
        encode_frame(&mut out, OP_BINARY, &[b'r'; 70_000], MASK);
        assert_eq!(&out[..2], &[0x82, 0x80 | 127]);
        assert_eq!(&out[2..10], &70_000u64.to_be_bytes());
        assert_eq!(unmask(&out, 14), vec![b'r'; 70_000]);
    }

    #[test]
    fn a_fragmented_frame_is_rejected() {
        // FIN=0, text: the first fragment of a message.
        assert_eq!(
            parse_frame(&[0x01, 0x03, b'a', b'b', b'c']),
            Err(ProtocolError::Fragmented(OP_TEXT))
        );
        assert_eq!(
            parse_frame(&[0x80, 0x01, b'a']),
            Err(ProtocolError::Continuation)
        );
        let mut fb = FrameBuf::new(READ_BUFFER, MASK);
        let room = fb.room();
        room[..2].copy_from_slice(&[0x01, 0x00]);
        fb.filled(2);
        let err = fb.drain(&mut |_| true).expect_err("fragment");
        assert!(err.to_string().contains("fragmented"), "{err}");
    }

    #[test]
    fn reserved_opcodes_bits_and_masked_frames_are_rejected() {
        for op in [3u8, 7, 0xB, 0xF] {
            assert_eq!(
                parse_frame(&[0x80 | op, 0]),
                Err(ProtocolError::ReservedOpcode(op))
            );
        }
        assert_eq!(
            parse_frame(&[0xC1, 0]),
            Err(ProtocolError::ReservedBits(0x40))
        );
        assert_eq!(parse_frame(&[0x81, 0x81]), Err(ProtocolError::Masked));
        assert_eq!(
            parse_frame(&[0x89, 126, 0, 126]),
            Err(ProtocolError::ControlTooLong {
                opcode: OP_PING,
                len: 126
            })
        );
    }

    #[test]
    fn the_key_is_base64_of_16_bytes() {
        // RFC 6455 §1.3: "the sample nonce".
        assert_eq!(base64_16(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_ne!(random_bytes(), random_bytes());
    }

    #[test]
    fn reads_the_status_code() {
        assert_eq!(
            status_code(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            Some(101)
        );
        assert_eq!(status_code(b"HTTP/1.1 401 Unauthorized\r\n\r\n"), Some(401));
        assert_eq!(status_code(b"garbage"), None);
    }
}
