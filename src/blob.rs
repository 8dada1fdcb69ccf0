//! Blob sources that can be opened again for every attempt, and the streaming pipeline that every
//! uploaded byte passes through: read → (hash the uncompressed bytes) → (compress) → hash and count
//! → hand to the HTTP body in bounded chunks.
//!
//! Nothing here holds a whole layer in memory: a blob is a byte range of a file that is read again
//! when an upload is retried, and the pipeline keeps at most a few chunks in flight.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::str::FromStr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

/// Size of the chunks handed to the HTTP body. Large enough to keep syscalls and channel hops
/// cheap, small enough that `CHANNEL_DEPTH` chunks per upload keep memory flat.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Chunks that may wait between the reader thread and the network per upload.
const CHANNEL_DEPTH: usize = 4;

/// Where a blob's bytes live. Cloning is cheap; `open` starts a fresh reader every time.
#[derive(Clone)]
pub enum BlobSource {
    /// Small documents (manifests, configs) already read or built in memory.
    Memory(Bytes),
    /// `len` bytes of a file starting at `offset`: a tar entry, or a whole file.
    FileRange {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
    /// An uncompressed layer (a `FileRange`) some of whose compressed chunks were made ahead of
    /// time, while the archive holding it was decompressed.
    Prepared {
        range: Box<BlobSource>,
        chunks: Arc<crate::compress::PreparedChunks>,
    },
}

impl fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(bytes) => write!(f, "Memory({} bytes)", bytes.len()),
            Self::FileRange { offset, len, .. } => write!(f, "FileRange({offset}+{len})"),
            Self::Prepared { range, chunks } => write!(f, "{range:?} with {chunks:?}"),
        }
    }
}

impl BlobSource {
    pub fn len(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::FileRange { len, .. } => *len,
            Self::Prepared { range, .. } => range.len(),
        }
    }

    /// Compressed chunks of this (uncompressed) blob made ahead of time, if any.
    pub fn prepared_chunks(&self) -> Option<&crate::compress::PreparedChunks> {
        match self {
            Self::Prepared { chunks, .. } => Some(chunks),
            Self::Memory(_) | Self::FileRange { .. } => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new reader positioned at the start of the blob.
    pub fn open(&self) -> Box<dyn Read + Send> {
        match self {
            Self::Memory(bytes) => Box::new(io::Cursor::new(bytes.clone())),
            Self::FileRange { file, offset, len } => Box::new(RangeReader {
                file: Arc::clone(file),
                position: *offset,
                end: offset + len,
            }),
            Self::Prepared { range, .. } => range.open(),
        }
    }

    /// Reads the first bytes (for sniffing compression) without consuming a reader.
    pub fn peek(&self, n: usize) -> io::Result<Vec<u8>> {
        let mut head = Vec::with_capacity(n);
        self.open().take(n as u64).read_to_end(&mut head)?;
        Ok(head)
    }

    /// Reads the whole blob; only for documents whose size the caller has bounded.
    pub fn read_all(&self) -> io::Result<Bytes> {
        match self {
            Self::Memory(bytes) => Ok(bytes.clone()),
            Self::FileRange { len, .. } => {
                let mut buffer = Vec::with_capacity(*len as usize);
                self.open().read_to_end(&mut buffer)?;
                Ok(buffer.into())
            }
            Self::Prepared { range, .. } => range.read_all(),
        }
    }
}

/// Positional reads of one byte range, so several readers can share one open file (and an
/// unlinked temporary file stays readable).
struct RangeReader {
    file: Arc<File>,
    position: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.end - self.position;
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = read_at(&self.file, &mut buf[..want], self.position)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image file ended before the blob did (was it truncated or changed?)",
            ));
        }
        self.position += n as u64;
        Ok(n)
    }
}

/// Fills `buf` from `offset` of `file`, positionally (several readers may share the file).
pub(crate) fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

/// The sha256 digest of some bytes, as an OCI digest.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    digest_from_hasher(Sha256::new_with_prefix(bytes))
}

fn digest_from_hasher(hasher: Sha256) -> Digest {
    let hex = hex::encode(hasher.finalize());
    Digest::from_str(&format!("sha256:{hex}")).expect("a sha256 hex string is a valid digest")
}

/// Digest and size of a byte stream, computed while it passed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measured {
    pub digest: Digest,
    pub size: u64,
}

/// A reader that hashes and counts what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    pub fn finish(self) -> Measured {
        Measured {
            digest: digest_from_hasher(self.hasher),
            size: self.size,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Hashes a whole source (used where a digest must be known before anything is sent).
pub fn measure(source: &BlobSource) -> io::Result<Measured> {
    let mut reader = HashingReader::new(source.open());
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish())
}

/// Compression applied to layers that arrive uncompressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip { level: u32 },
    Zstd { level: i32 },
}

impl Compression {
    /// Media type of an OCI layer compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Self::Gzip { .. } => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub(crate) fn codec(self) -> crate::compress::Codec {
        match self {
            Self::Gzip { level } => crate::compress::Codec::Gzip(i32::try_from(level).unwrap_or(1)),
            Self::Zstd { level } => crate::compress::Codec::Zstd(level),
        }
    }

    /// Compresses `input`, which is `source` opened, using the chunks of it already compressed.
    pub(crate) fn compress_source(
        self,
        source: &BlobSource,
        input: &mut dyn Read,
        output: &mut dyn Write,
    ) -> io::Result<()> {
        crate::compress::compress_prepared(self.codec(), input, source.prepared_chunks(), output)
    }
}

/// What the streaming pipeline saw, for the caller to compare with what it expected.
#[derive(Clone, Debug)]
pub struct Streamed {
    /// Digest and size of the bytes that were sent.
    pub sent: Measured,
    /// Digest and size of the uncompressed input, when the pipeline compressed it.
    pub uncompressed: Option<Measured>,
}

/// A stream of body chunks for an HTTP request, plus the measurement of what went into it.
pub struct BodyStream {
    pub chunks: mpsc::Receiver<io::Result<Bytes>>,
    pub outcome: tokio::task::JoinHandle<io::Result<Streamed>>,
}

/// Starts reading `source` on a blocking thread, optionally compressing it, and returns the
/// chunks as they are produced. Memory in flight is bounded by `CHANNEL_DEPTH × CHUNK_SIZE`.
pub fn stream(source: &BlobSource, compression: Option<Compression>) -> BodyStream {
    let (sender, chunks) = mpsc::channel(CHANNEL_DEPTH);
    let source = source.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink::new(sender.clone());
        let result = pump(&source, compression, &mut sink);
        if let Err(error) = &result {
            // Tell the body that the stream failed, so the request is aborted rather than
            // completed with a truncated blob. Sending may fail if the request is gone already.
            let _ = sender.blocking_send(Err(io::Error::new(error.kind(), error.to_string())));
        }
        result
    });
    BodyStream { chunks, outcome }
}

fn pump(
    source: &BlobSource,
    compression: Option<Compression>,
    sink: &mut ChunkSink,
) -> io::Result<Streamed> {
    let mut input = HashingReader::new(source.open());
    let uncompressed = if let Some(codec) = compression {
        codec.compress_source(source, &mut input, sink)?;
        Some(input.finish())
    } else {
        io::copy(&mut input, sink)?;
        None
    };
    sink.flush()?;
    Ok(Streamed {
        sent: sink.measured(),
        uncompressed,
    })
}

/// A `Write` end that hashes, counts and forwards bytes to an async channel in whole chunks.
struct ChunkSink {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: BytesMut,
    hasher: Sha256,
    size: u64,
}

impl ChunkSink {
    fn new(sender: mpsc::Sender<io::Result<Bytes>>) -> Self {
        Self {
            sender,
            buffer: BytesMut::with_capacity(CHUNK_SIZE),
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn measured(&self) -> Measured {
        Measured {
            digest: digest_from_hasher(self.hasher.clone()),
            size: self.size,
        }
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.buffer.reserve(CHUNK_SIZE);
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the upload stopped reading the blob",
            )
        })
    }
}

impl Write for ChunkSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if self.buffer.len() == CHUNK_SIZE {
            self.send_buffer()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(
            sha256_digest(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn file_range_reads_only_its_range_and_can_be_reopened() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        let source = BlobSource::FileRange {
            file: Arc::new(file),
            offset: 3,
            len: 4,
        };
        for _ in 0..2 {
            let mut text = String::new();
            source.open().read_to_string(&mut text).unwrap();
            assert_eq!(text, "3456");
        }
    }

    #[test]
    fn range_past_end_of_file_is_an_error_not_a_short_blob() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123").unwrap();
        let source = BlobSource::FileRange {
            file: Arc::new(file),
            offset: 2,
            len: 10,
        };
        let error = source.open().read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    fn compress_to_vec(codec: Compression, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::compress::compress(codec.codec(), &mut &input[..], &mut out).unwrap();
        out
    }

    #[test]
    fn compression_is_deterministic_and_round_trips() {
        let input: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for codec in [
            Compression::Gzip { level: 6 },
            Compression::Zstd { level: 3 },
        ] {
            let a = compress_to_vec(codec, &input);
            let b = compress_to_vec(codec, &input);
            assert_eq!(a, b, "{codec:?} output must not vary between runs");
            assert!(a.len() < input.len() / 3, "{codec:?} should compress text");
            let mut back = Vec::new();
            match codec {
                Compression::Gzip { .. } => {
                    flate2::read::MultiGzDecoder::new(&a[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Compression::Zstd { .. } => {
                    zstd::Decoder::new(&a[..])
                        .unwrap()
                        .read_to_end(&mut back)
                        .unwrap();
                }
            }
            assert_eq!(back, input);
        }
    }

    #[test]
    fn gzip_header_has_no_timestamp() {
        let out = compress_to_vec(Compression::Gzip { level: 6 }, b"x");
        assert_eq!(&out[4..8], &[0, 0, 0, 0], "MTIME must be zero");
    }

    #[tokio::test]
    async fn stream_measures_what_it_sends() {
        let data: Vec<u8> = (0..(3 * CHUNK_SIZE + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let source = BlobSource::Memory(Bytes::from(data.clone()));
        let mut body = stream(&source, None);
        let mut received = Vec::new();
        while let Some(chunk) = body.chunks.recv().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= CHUNK_SIZE);
            received.extend_from_slice(&chunk);
        }
        let outcome = body.outcome.await.unwrap().unwrap();
        assert_eq!(received, data);
        assert_eq!(outcome.sent.digest, sha256_digest(&data));
        assert_eq!(outcome.sent.size, data.len() as u64);
        assert!(outcome.uncompressed.is_none());
    }

    #[tokio::test]
    async fn stream_reports_diff_id_of_compressed_input() {
        let data = b"hello layer".repeat(1000);
        let source = BlobSource::Memory(Bytes::from(data.clone()));
        let mut body = stream(&source, Some(Compression::Gzip { level: 1 }));
        let mut received = Vec::new();
        while let Some(chunk) = body.chunks.recv().await {
            received.extend_from_slice(&chunk.unwrap());
        }
        let outcome = body.outcome.await.unwrap().unwrap();
        let uncompressed = outcome.uncompressed.unwrap();
        assert_eq!(uncompressed.digest, sha256_digest(&data));
        assert_eq!(outcome.sent.digest, sha256_digest(&received));
    }
}
