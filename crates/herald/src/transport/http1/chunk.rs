//! The one HTTP/1.1 chunk encoder of event streams: frames go out as
//! chunks with vectored writes, from a task (awaiting a full socket) or
//! from the parked flusher (never waiting: what the socket does not take
//! is handed back).

use std::io::{self, IoSlice, Write as _};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

/// Frames in one chunk (so a chunk's buffers stay below every platform's
/// `IOV_MAX`).
const MAX_IOV: usize = 512;

/// The last chunk: the response ends here.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The head (`<size in hex>\r\n`) of one HTTP/1.1 chunk, on the stack.
#[derive(Debug)]
pub struct ChunkHead {
    buf: [u8; 18],
    len: usize,
}

impl ChunkHead {
    fn new(size: usize) -> Self {
        use std::io::Write as _;
        let mut buf = [0u8; 18];
        let mut cursor = io::Cursor::new(&mut buf[..]);
        // 16 hex digits and CRLF always fit.
        let _ = write!(cursor, "{size:x}\r\n");
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        Self { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Frames as HTTP/1.1 chunks of at most `MAX_IOV` frames each: the chunk
/// heads, which [`chunk_slices`] then lays out with the frames. A chunk
/// of no bytes is left out, since an empty chunk ends the body.
pub fn chunk_heads(frames: &[Bytes]) -> Vec<Option<ChunkHead>> {
    frames
        .chunks(MAX_IOV)
        .map(|group| {
            let size: usize = group.iter().map(Bytes::len).sum();
            (size > 0).then(|| ChunkHead::new(size))
        })
        .collect()
}

/// The buffers of one vectored write of `frames` as chunks.
pub fn chunk_slices<'a>(frames: &'a [Bytes], heads: &'a [Option<ChunkHead>]) -> Vec<IoSlice<'a>> {
    let mut slices = Vec::with_capacity(frames.len() + 2 * heads.len());
    for (group, head) in frames.chunks(MAX_IOV).zip(heads) {
        if let Some(head) = head {
            slices.push(IoSlice::new(head.as_bytes()));
            slices.extend(group.iter().map(|f| IoSlice::new(f)));
            slices.push(IoSlice::new(b"\r\n"));
        }
    }
    slices
}

/// Writes frames as HTTP/1.1 chunks, with vectored writes.
pub async fn write(stream: &mut TcpStream, frames: &[Bytes]) -> io::Result<()> {
    let heads = chunk_heads(frames);
    let mut slices = chunk_slices(frames, &heads);
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = match stream.try_write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Appends `frames` as chunks to `out` (a response head, say): one buffer
/// for one write.
pub fn append(out: &mut Vec<u8>, frames: &[Bytes]) {
    let heads = chunk_heads(frames);
    for slice in chunk_slices(frames, &heads) {
        out.extend_from_slice(&slice);
    }
}

/// Writes `frames` as chunks without blocking. Returns the bytes the socket
/// did not take.
pub fn try_write(stream: &std::net::TcpStream, frames: &[Bytes]) -> io::Result<Option<Bytes>> {
    let heads = chunk_heads(frames);
    try_write_slices(stream, chunk_slices(frames, &heads))
}

/// Writes `frames` as they are (a parked socket's WebSocket frames)
/// without blocking. Returns the bytes the socket did not take.
pub fn try_write_raw(stream: &std::net::TcpStream, frames: &[Bytes]) -> io::Result<Option<Bytes>> {
    // Each `writev` takes at most `IOV_MAX` buffers: the rest follow.
    try_write_slices(stream, frames.iter().map(|f| IoSlice::new(f)).collect())
}

fn try_write_slices(
    stream: &std::net::TcpStream,
    mut slices: Vec<IoSlice<'_>>,
) -> io::Result<Option<Bytes>> {
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match (&*stream).write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut left = BytesMut::with_capacity(rest.iter().map(|s| s.len()).sum());
                for s in rest.iter() {
                    left.extend_from_slice(s);
                }
                return Ok(Some(left.freeze()));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}
