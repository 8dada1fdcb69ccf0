//! Parallel, deterministic compression of layers that arrive uncompressed (legacy docker save).
//!
//! The input is cut into fixed-size chunks; each chunk is compressed on its own, on every core,
//! and the results are written in order: a gzip layer is a series of gzip members, a zstd layer
//! a series of zstd frames. Both are valid single files for every reader (RFC 1952 §2.2 allows
//! several members; Go's `compress/gzip`, which docker, containerd and skopeo use, reads them
//! all by default). Because chunk boundaries do not depend on the number of threads, the bytes —
//! and so the layer digest — are the same on every machine and every run.
//!
//! Why libdeflate and not flate2 for gzip (measured on this project's 2-core machine, 300 MB of
//! `/usr`): zlib-rs level 6 compresses 65 MB/s per core to a ratio of 0.434; libdeflate level 1
//! does 199 MB/s per core to 0.452 (within 5 % of gzip -6's 0.428), and level 6 83 MB/s to
//! 0.425. zlib-rs level 1 is fast (170 MB/s) but much larger (0.527). A CI push is bound by
//! this step, so the default is libdeflate level 1.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::thread;

/// Uncompressed bytes per gzip member: large enough that member overhead (18 bytes) and the
/// lost back-references at chunk edges cost well under 1 %, small enough to spread a layer over
/// all cores.
const GZIP_CHUNK: usize = 1024 * 1024;
/// zstd gains more from long windows, so its chunks are larger.
const ZSTD_CHUNK: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// libdeflate level (1 to 12).
    Gzip(i32),
    /// zstd level (1 to 19).
    Zstd(i32),
}

impl Codec {
    pub fn chunk_size(self) -> usize {
        match self {
            Self::Gzip(_) => GZIP_CHUNK,
            Self::Zstd(_) => ZSTD_CHUNK,
        }
    }

    fn compress_chunk(self, chunk: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Self::Gzip(level) => gzip_chunk(level, chunk),
            Self::Zstd(level) => zstd_chunk(level, chunk),
        }
    }
}

thread_local! {
    /// A compressor per worker thread and level, reused across chunks.
    static GZIP: RefCell<Option<(i32, libdeflater::Compressor)>> = const { RefCell::new(None) };
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

fn zstd_chunk(level: i32, chunk: &[u8]) -> io::Result<Vec<u8>> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let mut compressor = zstd::bulk::Compressor::new(level)?;
            // A content checksum per frame lets readers detect corruption.
            compressor.include_checksum(true)?;
            *slot = Some((level, compressor));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        compressor.compress(chunk)
    })
}

fn gzip_chunk(level: i32, chunk: &[u8]) -> io::Result<Vec<u8>> {
    GZIP.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let lvl = libdeflater::CompressionLvl::new(level).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("gzip level {level} is not 1 to 12"),
                )
            })?;
            *slot = Some((level, libdeflater::Compressor::new(lvl)));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        let mut out = vec![0; compressor.gzip_compress_bound(chunk.len())];
        let n = compressor
            .gzip_compress(chunk, &mut out)
            .map_err(|e| io::Error::other(format!("gzip compression failed: {e}")))?;
        out.truncate(n);
        Ok(out)
    })
}

/// Compresses `input` into `output`. Chunks are compressed on the shared worker pool; at most
/// `in_flight` of them (input and output) are held at once, so memory does not grow with the
/// layer.
pub fn compress(codec: Codec, input: &mut dyn Read, output: &mut dyn Write) -> io::Result<()> {
    compress_prepared(codec, input, None, output)
}

/// As [`compress`], taking the chunks that `prepared` already holds from there instead of
/// compressing them again. The output is the same bytes either way: a chunk is compressed on its
/// own, whoever does it.
pub fn compress_prepared(
    codec: Codec,
    input: &mut dyn Read,
    prepared: Option<&PreparedChunks>,
    output: &mut dyn Write,
) -> io::Result<()> {
    let prepared = prepared.filter(|p| p.codec == codec);
    let in_flight = rayon::current_num_threads() + 1;
    let mut pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>> =
        VecDeque::with_capacity(in_flight);
    let mut any = false;
    for index in 0u64.. {
        // Read even when the chunk is prepared: the caller hashes the input (the diff_id).
        let chunk = read_chunk(input, codec.chunk_size())?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (sender, receiver) = mpsc::sync_channel(1);
        match prepared
            .map(|p| p.get(index, chunk.len()))
            .transpose()?
            .flatten()
        {
            // Cannot fail: the receiver is held here.
            Some(compressed) => drop(sender.send(Ok(compressed))),
            None => rayon::spawn(move || {
                let _ = sender.send(codec.compress_chunk(&chunk));
            }),
        }
        pending.push_back(receiver);
        if pending.len() >= in_flight {
            write_next(&mut pending, output)?;
        }
    }
    while !pending.is_empty() {
        write_next(&mut pending, output)?;
    }
    if !any {
        // An empty layer is still a valid (empty) gzip or zstd file.
        output.write_all(&codec.compress_chunk(&[])?)?;
    }
    Ok(())
}

fn write_next(
    pending: &mut VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
    output: &mut dyn Write,
) -> io::Result<()> {
    let receiver = pending.pop_front().expect("callers check");
    let compressed = receiver
        .recv()
        .map_err(|_| io::Error::other("a compression worker stopped"))??;
    output.write_all(&compressed)
}

/// Chunks of one input compressed ahead of time by a [`Precompressor`], by chunk index.
pub struct PreparedChunks {
    codec: Codec,
    file: Arc<File>,
    chunks: HashMap<u64, ChunkPlace>,
}

/// Where a prepared chunk's compressed bytes are, and how long its input was.
#[derive(Clone, Copy, Debug)]
struct ChunkPlace {
    input_len: usize,
    offset: u64,
    len: usize,
}

impl std::fmt::Debug for PreparedChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PreparedChunks({:?}, {} chunks)",
            self.codec,
            self.chunks.len()
        )
    }
}

impl PreparedChunks {
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The compressed bytes of chunk `index`, if prepared from an input chunk of `input_len`
    /// bytes (anything else means it was prepared from other bytes: not used).
    fn get(&self, index: u64, input_len: usize) -> io::Result<Option<Vec<u8>>> {
        let Some(place) = self.chunks.get(&index) else {
            return Ok(None);
        };
        if place.input_len != input_len {
            return Ok(None);
        }
        let mut compressed = vec![0; place.len];
        crate::blob::read_exact_at(&self.file, &mut compressed, place.offset)?;
        Ok(Some(compressed))
    }
}

/// Which input and which chunk of it.
type ChunkKey = (u64, u64);

/// Compresses chunks on one spare thread while another thread is busy with something that cannot
/// be spread over cores (decompressing a gzip-wrapped docker save). The giver never waits: a
/// chunk offered while the thread is busy is dropped, and compressed later with the rest. So
/// this costs no time when the work turns out not to be needed (the registry already has the
/// layer), and saves up to one core's worth of compression when it is.
pub struct Precompressor {
    codec: Codec,
    sender: mpsc::SyncSender<(ChunkKey, Vec<u8>)>,
    worker: thread::JoinHandle<io::Result<(File, HashMap<ChunkKey, ChunkPlace>)>>,
}

impl Precompressor {
    pub fn start(codec: Codec, temp_dir: &Path) -> io::Result<Self> {
        let mut file = tempfile::tempfile_in(temp_dir)?;
        // One chunk waiting while one is compressed: a few MiB at most.
        let (sender, receiver) = mpsc::sync_channel::<(ChunkKey, Vec<u8>)>(1);
        let worker = thread::Builder::new()
            .name("precompress".into())
            .spawn(move || {
                let mut chunks = HashMap::new();
                let mut end = 0u64;
                for (key, chunk) in receiver {
                    let compressed = codec.compress_chunk(&chunk)?;
                    file.write_all(&compressed)?;
                    let place = ChunkPlace {
                        input_len: chunk.len(),
                        offset: end,
                        len: compressed.len(),
                    };
                    chunks.insert(key, place);
                    end += compressed.len() as u64;
                }
                Ok((file, chunks))
            })?;
        Ok(Self {
            codec,
            sender,
            worker,
        })
    }

    /// Hands chunk `index` of input `input` over, unless the thread is busy. Gives the chunk
    /// back when it was not taken, so its buffer can be reused.
    pub fn offer(&self, input: u64, index: u64, chunk: Vec<u8>) -> Option<Vec<u8>> {
        match self.sender.try_send(((input, index), chunk)) {
            Ok(()) => None,
            Err(
                mpsc::TrySendError::Full((_, chunk)) | mpsc::TrySendError::Disconnected((_, chunk)),
            ) => Some(chunk),
        }
    }

    /// Waits for the chunks taken so far and returns them per input.
    pub fn finish(self) -> io::Result<HashMap<u64, Arc<PreparedChunks>>> {
        drop(self.sender);
        let (file, chunks) = self
            .worker
            .join()
            .map_err(|_| io::Error::other("the precompression thread panicked"))??;
        let file = Arc::new(file);
        let mut by_input: HashMap<u64, HashMap<u64, ChunkPlace>> = HashMap::new();
        for ((input, index), place) in chunks {
            by_input.entry(input).or_default().insert(index, place);
        }
        Ok(by_input
            .into_iter()
            .map(|(input, chunks)| {
                let prepared = PreparedChunks {
                    codec: self.codec,
                    file: Arc::clone(&file),
                    chunks,
                };
                (input, Arc::new(prepared))
            })
            .collect())
    }
}

/// Reads up to `size` bytes (fewer only at the end of the input).
pub(crate) fn read_chunk(input: &mut dyn Read, size: usize) -> io::Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(size);
    input.take(size as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: usize) -> Vec<u8> {
        (0..)
            .flat_map(|i: u32| format!("line {i} of some text with words\n").into_bytes())
            .take(bytes)
            .collect()
    }

    fn round_trip(codec: Codec, data: &[u8]) -> Vec<u8> {
        let mut compressed = Vec::new();
        compress(codec, &mut &data[..], &mut compressed).unwrap();
        let mut back = Vec::new();
        match codec {
            Codec::Gzip(_) => {
                flate2::read::MultiGzDecoder::new(&compressed[..])
                    .read_to_end(&mut back)
                    .unwrap();
            }
            Codec::Zstd(_) => {
                zstd::Decoder::new(&compressed[..])
                    .unwrap()
                    .read_to_end(&mut back)
                    .unwrap();
            }
        }
        assert_eq!(back, data, "{codec:?} round trip");
        compressed
    }

    #[test]
    fn multi_chunk_layers_round_trip_and_are_deterministic() {
        let data = text(5 * GZIP_CHUNK + 12_345);
        for codec in [Codec::Gzip(1), Codec::Gzip(6), Codec::Zstd(3)] {
            let first = round_trip(codec, &data);
            let second = round_trip(codec, &data);
            assert_eq!(first, second, "{codec:?} must be deterministic");
            assert!(first.len() < data.len() / 3, "{codec:?} compresses text");
        }
    }

    #[test]
    fn output_is_the_chunks_compressed_one_by_one() {
        // So it cannot depend on how many threads did the work, or in which order.
        let data = text(3 * GZIP_CHUNK + 7);
        let parallel = round_trip(Codec::Gzip(1), &data);
        let sequential: Vec<u8> = data
            .chunks(GZIP_CHUNK)
            .flat_map(|chunk| Codec::Gzip(1).compress_chunk(chunk).unwrap())
            .collect();
        assert_eq!(parallel, sequential);
    }

    #[test]
    fn prepared_chunks_give_the_same_bytes_as_compressing_them_all() {
        let data = text(4 * GZIP_CHUNK + 99);
        let codec = Codec::Gzip(1);
        let precompressor = Precompressor::start(codec, &std::env::temp_dir()).unwrap();
        // The channel holds one chunk, so the first offer is always taken; later ones only if
        // the thread has caught up. Chunk 1 of input 7 is offered with the wrong length: it must
        // not be used for input 7's chunk 1.
        assert!(
            precompressor
                .offer(7, 0, data[..GZIP_CHUNK].to_vec())
                .is_none()
        );
        let _ = precompressor.offer(7, 1, data[..10].to_vec());
        let _ = precompressor.offer(7, 3, data[3 * GZIP_CHUNK..4 * GZIP_CHUNK].to_vec());
        let prepared = precompressor.finish().unwrap();
        let chunks = &prepared[&7];
        assert!(!chunks.is_empty());

        let mut expected = Vec::new();
        compress(codec, &mut &data[..], &mut expected).unwrap();
        let mut with_prepared = Vec::new();
        compress_prepared(codec, &mut &data[..], Some(chunks), &mut with_prepared).unwrap();
        assert_eq!(with_prepared, expected);

        // Chunks made with another codec are not used.
        let mut zstd = Vec::new();
        compress_prepared(Codec::Zstd(3), &mut &data[..], Some(chunks), &mut zstd).unwrap();
        let mut zstd_expected = Vec::new();
        compress(Codec::Zstd(3), &mut &data[..], &mut zstd_expected).unwrap();
        assert_eq!(zstd, zstd_expected);
    }

    #[test]
    fn empty_input_is_a_valid_empty_file() {
        for codec in [Codec::Gzip(1), Codec::Zstd(3)] {
            assert!(!round_trip(codec, &[]).is_empty());
        }
    }

    #[test]
    fn gzip_members_carry_no_time_or_name() {
        let compressed = round_trip(Codec::Gzip(1), b"x");
        assert_eq!(
            &compressed[..4],
            &[0x1f, 0x8b, 8, 0],
            "no FNAME or other flags"
        );
        assert_eq!(&compressed[4..8], &[0, 0, 0, 0], "MTIME is zero");
    }
}
