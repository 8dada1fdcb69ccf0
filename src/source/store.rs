//! Where an image's files live: a directory, or a tar archive indexed in one pass.
//!
//! A tar is never extracted. One sequential pass over its headers records, for every regular
//! file, the offset and length of its body; symlinks and hardlinks (docker save uses both) are
//! resolved inside the archive. A gzip- or zstd-wrapped tar is not seekable, so it is
//! decompressed once into an anonymous temporary file and indexed like a plain tar — and only
//! as far as the temporary directory has room: a small file that decompresses to terabytes (a
//! decompression bomb, or an image too large for this disk) is refused before it fills the
//! disk of the runner. Decompressing cannot use more than one core, so a spare core meanwhile
//! compresses what it can of the legacy layers in it (they are compressed on the way out anyway).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::blob::{BlobSource, Compression};
use crate::compress::{Precompressor, PreparedChunks};

use super::SourceError;

/// Symlink hops followed before a chain is called a loop.
const MAX_LINK_HOPS: usize = 32;

/// Outer wrapping of an image file, recognised by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrapping {
    None,
    Gzip,
    Zstd,
}

impl Wrapping {
    /// The compression a file (or a blob) starting with `head` has, by its magic bytes.
    pub fn of(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "tar",
            Self::Gzip => "gzip-compressed tar",
            Self::Zstd => "zstd-compressed tar",
        }
    }
}

pub enum Store {
    Directory(PathBuf),
    Tar(TarIndex),
}

impl Store {
    /// Opens `path`: a directory as is, a file as a (possibly compressed) tar. `precompress`:
    /// how layers that turn out to be uncompressed will be compressed, so that a spare core can
    /// start on them while a wrapped tar is decompressed.
    pub fn open(
        path: &Path,
        temp_dir: &Path,
        precompress: Option<Compression>,
    ) -> Result<(Self, Wrapping), SourceError> {
        let metadata = std::fs::metadata(path).map_err(|e| SourceError::io(path, e))?;
        if metadata.is_dir() {
            return Ok((Self::Directory(path.to_path_buf()), Wrapping::None));
        }
        let file = File::open(path).map_err(|e| SourceError::io(path, e))?;
        Self::from_file(file, path, temp_dir, precompress)
    }

    /// A (possibly compressed) tar already open; `path` names it in messages.
    pub fn from_file(
        mut file: File,
        path: &Path,
        temp_dir: &Path,
        precompress: Option<Compression>,
    ) -> Result<(Self, Wrapping), SourceError> {
        let wrapping = sniff_wrapping(&mut file, path)?;
        // Large buffers: the decompressed tar is written once, hundreds of MB of it.
        let input = io::BufReader::with_capacity(IO_BUFFER, file);
        let (file, prepared) = match wrapping {
            Wrapping::None => (input.into_inner(), HashMap::new()),
            Wrapping::Gzip => decompress_to_temp(
                flate2::read::MultiGzDecoder::new(input),
                path,
                wrapping,
                temp_dir,
                precompress,
            )?,
            Wrapping::Zstd => {
                let decoder =
                    zstd::Decoder::with_buffer(input).map_err(|e| SourceError::io(path, e))?;
                decompress_to_temp(decoder, path, wrapping, temp_dir, precompress)?
            }
        };
        let mut index = TarIndex::build(file, path)?;
        index.prepared = prepared;
        Ok((Self::Tar(index), wrapping))
    }

    /// Whether a (relative, `/`-separated) path names a regular file in the store.
    pub fn contains(&self, name: &str) -> bool {
        self.locate(name).is_ok()
    }

    /// The file at `name` as a re-openable blob source.
    pub fn source(&self, name: &str) -> Result<BlobSource, SourceError> {
        self.locate(name)
    }

    /// Reads a small document, refusing anything larger than `limit` bytes.
    pub fn read_document(&self, name: &str, limit: u64) -> Result<bytes::Bytes, SourceError> {
        let source = self.locate(name)?;
        if source.len() > limit {
            return Err(SourceError::Invalid(format!(
                "{name} is {} bytes, more than the {limit} bytes such a document may have",
                source.len()
            )));
        }
        source
            .read_all()
            .map_err(|e| SourceError::Invalid(format!("cannot read {name}: {e}")))
    }

    /// Every file name in a tar store (links included), for fuzzing and diagnostics.
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::Directory(_) => Vec::new(),
            Self::Tar(index) => index.entries.keys().cloned().collect(),
        }
    }

    fn locate(&self, name: &str) -> Result<BlobSource, SourceError> {
        let relative = normalize(name).ok_or_else(|| {
            SourceError::Invalid(format!("{name:?} is not a path inside the image"))
        })?;
        match self {
            Self::Directory(root) => {
                let path = root.join(&relative);
                let real = path.canonicalize().map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => SourceError::Missing(relative.clone()),
                    _ => SourceError::io(&path, e),
                })?;
                // Symlinks inside the layout are fine; one that leads out of it is not: a
                // hostile layout could otherwise have this tool read (and start uploading)
                // any file the runner can read before a digest check refuses it.
                let real_root = root.canonicalize().map_err(|e| SourceError::io(root, e))?;
                if !real.starts_with(&real_root) {
                    return Err(SourceError::Invalid(format!(
                        "{relative} is a link to {}, outside the layout; refusing it",
                        real.display()
                    )));
                }
                let file = File::open(&real).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => SourceError::Missing(relative.clone()),
                    _ => SourceError::io(&path, e),
                })?;
                let metadata = file.metadata().map_err(|e| SourceError::io(&path, e))?;
                if !metadata.is_file() {
                    return Err(SourceError::Missing(relative));
                }
                Ok(BlobSource::FileRange {
                    file: Arc::new(file),
                    offset: 0,
                    len: metadata.len(),
                })
            }
            Self::Tar(index) => index.source(&relative),
        }
    }
}

fn sniff_wrapping(file: &mut File, path: &Path) -> Result<Wrapping, SourceError> {
    let mut head = [0u8; 512];
    let n = read_up_to(file, &mut head).map_err(|e| SourceError::io(path, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| SourceError::io(path, e))?;
    let head = &head[..n];
    if head.is_empty() {
        return Err(SourceError::NotAnImage {
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    match Wrapping::of(head) {
        Wrapping::None => {}
        compressed => return Ok(compressed),
    }
    if head.len() == 512 && (&head[257..262] == b"ustar" || tar_checksum_ok(head)) {
        return Ok(Wrapping::None);
    }
    Err(SourceError::NotAnImage {
        path: path.to_path_buf(),
        reason: "it is neither a tar archive (docker save, oci-archive), a gzip- or \
                 zstd-compressed tar, nor a directory"
            .into(),
    })
}

/// Old-style (v7) tar headers have no magic; their header checksum identifies them.
fn tar_checksum_ok(header: &[u8]) -> bool {
    let stored = std::str::from_utf8(&header[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let computed: u32 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    stored == Some(computed)
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Buffer size for reading a wrapped tar and writing its decompressed copy: 8 KiB buffers cost
/// about twice the system time on a 600 MB docker save.
const IO_BUFFER: usize = 1024 * 1024;

/// Decompresses a wrapped tar into an anonymous temporary file. Decompression cannot be spread
/// over cores, so with `precompress` a spare core meanwhile compresses what it can of the
/// bodies that look like legacy docker-save layers (see `prepare_layers`); the chunks it made
/// are returned by the offset of their entry's body.
fn decompress_to_temp(
    decoder: impl Read,
    path: &Path,
    wrapping: Wrapping,
    temp_dir: &Path,
    precompress: Option<Compression>,
) -> Result<(File, HashMap<u64, Arc<PreparedChunks>>), SourceError> {
    decompress_to_temp_within(
        decoder,
        path,
        wrapping,
        temp_dir,
        room_in(temp_dir),
        precompress,
    )
}

/// The part of the free space of `dir` a decompressed tar may take: all but 5 %, so that the
/// runner (and the layers compressed later) keep some. `None` where it cannot be known.
fn room_in(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let stat = rustix::fs::statvfs(dir).ok()?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        Some(free - free / 20)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// A writer that refuses to take more than `limit` bytes.
struct Bounded<W> {
    inner: W,
    written: u64,
    limit: u64,
    exceeded: bool,
}

impl<W: io::Write> io::Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("the decompressed tar does not fit"));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// [`decompress_to_temp`], writing at most `limit` bytes (no limit: `None`).
fn decompress_to_temp_within(
    decoder: impl Read,
    path: &Path,
    wrapping: Wrapping,
    temp_dir: &Path,
    limit: Option<u64>,
    precompress: Option<Compression>,
) -> Result<(File, HashMap<u64, Arc<PreparedChunks>>), SourceError> {
    // Anonymous and already unlinked: nothing is left behind, whatever way the process ends.
    let mut temp = tempfile::tempfile_in(temp_dir).map_err(|e| SourceError::io(temp_dir, e))?;
    let mut tee = Tee {
        input: decoder,
        copy: Bounded {
            inner: io::BufWriter::with_capacity(IO_BUFFER, &temp),
            written: 0,
            limit: limit.unwrap_or(u64::MAX),
            exceeded: false,
        },
        failure: None,
    };
    let prepared = precompress
        .map(|compression| prepare_layers(&mut tee, compression, temp_dir))
        .unwrap_or_default();
    // Whatever the tar reader above did not read (all of it without `precompress`).
    let mut buffer = vec![0; IO_BUFFER];
    while tee.failure.is_none() {
        match tee.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Recorded in `tee.failure`.
            Err(_) => break,
        }
    }
    let flushed = io::Write::flush(&mut tee.copy);
    let broken = |reason: String| SourceError::NotAnImage {
        path: path.to_path_buf(),
        reason,
    };
    match tee.failure {
        Some(TeeFailure::Read(e)) => {
            return Err(broken(format!(
                "it looks like a {} but cannot be decompressed ({e}); is it truncated?",
                wrapping.name()
            )));
        }
        Some(TeeFailure::Write(_)) if tee.copy.exceeded => {
            return Err(broken(format!(
                "it is a {} that decompresses to more than {} ({} bytes), the room left in \
                 the temporary directory {}; it is a decompression bomb, or an image too \
                 large for this disk: point TMPDIR (RUNNER_TEMP on GitHub Actions) at a \
                 disk with more room, or pass the tar uncompressed",
                wrapping.name(),
                crate::report::human_bytes(tee.copy.limit),
                tee.copy.limit,
                temp_dir.display()
            )));
        }
        Some(TeeFailure::Write(e)) => return Err(SourceError::io(temp_dir, e)),
        None => flushed.map_err(|e| SourceError::io(temp_dir, e))?,
    }
    drop(tee);
    temp.seek(SeekFrom::Start(0))
        .map_err(|e| SourceError::io(temp_dir, e))?;
    let mut head = [0u8; 512];
    let n = read_up_to(&mut temp, &mut head).map_err(|e| SourceError::io(temp_dir, e))?;
    if n < 512 || !(&head[257..262] == b"ustar" || tar_checksum_ok(&head)) {
        return Err(SourceError::NotAnImage {
            path: path.to_path_buf(),
            reason: format!(
                "it is a {} but what it holds is not a tar archive",
                wrapping.name()
            ),
        });
    }
    // The tar reader assumes it starts at offset 0.
    temp.seek(SeekFrom::Start(0))
        .map_err(|e| SourceError::io(temp_dir, e))?;
    Ok((temp, prepared))
}

enum TeeFailure {
    Read(io::Error),
    Write(io::Error),
}

/// Copies everything read through it to `copy`, so a single pass can both decompress a tar to
/// disk and let a tar reader look at it. The first failure is kept: the caller reports it as a
/// broken archive (read) or a temp-disk problem (write).
struct Tee<R, W> {
    input: R,
    copy: W,
    failure: Option<TeeFailure>,
}

impl<R: Read, W: io::Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the decompressed copy already failed"));
        }
        let n = match self.input.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let error = io::Error::new(e.kind(), e.to_string());
                self.failure = Some(TeeFailure::Read(e));
                return Err(error);
            }
        };
        if let Err(e) = self.copy.write_all(&buf[..n]) {
            let error = io::Error::new(e.kind(), e.to_string());
            self.failure = Some(TeeFailure::Write(e));
            return Err(error);
        }
        Ok(n)
    }
}

/// Reads the tar stream as it is decompressed and offers the chunks of every body that looks
/// like a legacy docker-save layer (`<id>/layer.tar`, not itself compressed) to a
/// [`Precompressor`]. Best effort: anything unexpected ends it, and the archive is then read
/// and checked as usual; a chunk is used later only for the layer it was made from.
fn prepare_layers<R: Read, W: io::Write>(
    tee: &mut Tee<R, W>,
    compression: Compression,
    temp_dir: &Path,
) -> HashMap<u64, Arc<PreparedChunks>> {
    let codec = compression.codec();
    let Ok(precompressor) = Precompressor::start(codec, temp_dir) else {
        return HashMap::new();
    };
    let mut archive = tar::Archive::new(&mut *tee);
    if let Ok(entries) = archive.entries() {
        'entries: for entry in entries {
            let Ok(mut entry) = entry else { break };
            let is_layer = entry.header().entry_type().is_file()
                && entry.size() >= codec.chunk_size() as u64
                && entry.path().is_ok_and(|p| p.ends_with("layer.tar"));
            if !is_layer {
                continue;
            }
            let body = entry.raw_file_position();
            let mut spare = Vec::new();
            for index in 0u64.. {
                let mut chunk = std::mem::take(&mut spare);
                chunk.clear();
                if (&mut entry)
                    .take(codec.chunk_size() as u64)
                    .read_to_end(&mut chunk)
                    .is_err()
                {
                    break 'entries;
                }
                if chunk.is_empty() || (index == 0 && Wrapping::of(&chunk) != Wrapping::None) {
                    break;
                }
                if let Some(not_taken) = precompressor.offer(body, index, chunk) {
                    spare = not_taken;
                }
            }
        }
    }
    precompressor.finish().unwrap_or_default()
}

/// Turns an archive or layout path into a canonical relative form (`a/b/c`), or `None` when it
/// is absolute or climbs out with `..`.
pub fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(name).components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// Resolves a symlink target found at `link` (relative to the link's directory) to an archive
/// path, or `None` when it points outside the archive.
fn resolve_symlink_target(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Requires the zero block that ends a tar right after its last entry.
fn check_end_marker(file: &File, end_of_entries: u64, total: u64) -> Result<(), String> {
    let truncated = || {
        format!(
            "the tar archive stops after {end_of_entries} of its bytes without the \
             end-of-archive marker: it is truncated; re-create it"
        )
    };
    if end_of_entries.saturating_add(512) > total {
        return Err(truncated());
    }
    let mut marker = [0u8; 512];
    let mut reader = file;
    reader
        .seek(SeekFrom::Start(end_of_entries))
        .and_then(|_| reader.read_exact(&mut marker))
        .map_err(|e| format!("cannot read the end of the tar archive: {e}"))?;
    if marker.iter().any(|&b| b != 0) {
        return Err(format!(
            "the tar archive has data after its last readable entry (at byte {end_of_entries}) \
             that is not a tar header: it is damaged or truncated"
        ));
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum TarEntry {
    File { offset: u64, len: u64 },
    Link { target: String },
}

pub struct TarIndex {
    file: Arc<File>,
    entries: HashMap<String, TarEntry>,
    /// Chunks compressed while the archive was decompressed, by the offset of their body.
    prepared: HashMap<u64, Arc<PreparedChunks>>,
}

impl TarIndex {
    /// Reads every header once (bodies are skipped with seeks) and records where each file is.
    fn build(file: File, path: &Path) -> Result<Self, SourceError> {
        let total = file.metadata().map_err(|e| SourceError::io(path, e))?.len();
        let invalid = |reason: String| SourceError::NotAnImage {
            path: path.to_path_buf(),
            reason,
        };
        let mut entries = HashMap::new();
        // Where the last entry (header and padded body) ends: an end-of-archive block must
        // follow, or the archive was cut at a block boundary (the tar reader alone would take
        // that for a shorter, complete archive).
        let mut end_of_entries = 0u64;
        let mut archive = tar::Archive::new(&file);
        let iter = archive
            .entries_with_seek()
            .map_err(|e| invalid(format!("it is not a readable tar archive: {e}")))?;
        for entry in iter {
            let entry = entry.map_err(|e| {
                invalid(format!(
                    "the tar archive is damaged or truncated ({e}); re-create it"
                ))
            })?;
            end_of_entries = entry
                .raw_file_position()
                .saturating_add(entry.size().next_multiple_of(512));
            let raw_path = entry
                .path()
                .map_err(|e| invalid(format!("a tar entry has an unreadable name: {e}")))?
                .to_string_lossy()
                .into_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() || kind.is_pax_global_extensions() {
                continue;
            }
            let name = normalize(&raw_path).ok_or_else(|| {
                invalid(format!(
                    "the tar entry {raw_path:?} is an absolute path or climbs out with '..'; \
                     refusing a possibly hostile archive"
                ))
            })?;
            let record = if kind.is_file() || kind.is_contiguous() {
                let offset = entry.raw_file_position();
                let len = entry.size();
                if offset.saturating_add(len) > total {
                    return Err(invalid(format!(
                        "the tar entry {name} ends past the end of the file: the archive is \
                         truncated"
                    )));
                }
                TarEntry::File { offset, len }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| invalid(format!("link {name} has an unreadable target: {e}")))?
                    .ok_or_else(|| invalid(format!("link {name} has no target")))?
                    .to_string_lossy()
                    .into_owned();
                let resolved = if kind.is_symlink() {
                    resolve_symlink_target(&name, &target)
                } else {
                    normalize(&target)
                };
                let target = resolved.ok_or_else(|| {
                    invalid(format!(
                        "link {name} points to {target:?}, outside the archive; refusing it"
                    ))
                })?;
                TarEntry::Link { target }
            } else {
                // Devices, fifos and the like cannot be part of an image archive's own files.
                continue;
            };
            match entries.entry(name) {
                Entry::Occupied(occupied) => {
                    return Err(invalid(format!(
                        "the archive holds {} twice; which one is meant is ambiguous",
                        occupied.key()
                    )));
                }
                Entry::Vacant(vacant) => {
                    vacant.insert(record);
                }
            }
        }
        check_end_marker(&file, end_of_entries, total).map_err(invalid)?;
        Ok(Self {
            file: Arc::new(file),
            entries,
            prepared: HashMap::new(),
        })
    }

    fn source(&self, name: &str) -> Result<BlobSource, SourceError> {
        let mut current = name.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            match self.entries.get(&current) {
                None => return Err(SourceError::Missing(name.to_owned())),
                Some(TarEntry::File { offset, len }) => {
                    let range = BlobSource::FileRange {
                        file: Arc::clone(&self.file),
                        offset: *offset,
                        len: *len,
                    };
                    return Ok(match self.prepared.get(offset) {
                        Some(chunks) => BlobSource::Prepared {
                            range: Box::new(range),
                            chunks: Arc::clone(chunks),
                        },
                        None => range,
                    });
                }
                Some(TarEntry::Link { target }) => current.clone_from(target),
            }
        }
        Err(SourceError::Invalid(format!(
            "{name} is a link that never reaches a file (a link loop); the archive is broken"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decompression_bomb_is_refused_before_it_fills_the_disk() {
        // 16 MiB of zeros in a tar, gzip-compressed to well under 100 KiB, with room for 2 MiB.
        let mut tar = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut tar);
            let zeros = vec![0u8; 16 * 1024 * 1024];
            append_file(&mut builder, "zeros", &zeros);
            builder.finish().unwrap();
        }
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        io::Write::write_all(&mut gzip, &tar).unwrap();
        let bomb = gzip.finish().unwrap();
        assert!(
            bomb.len() < 100 * 1024,
            "a small file: {} bytes",
            bomb.len()
        );

        let dir = tempfile::tempdir().unwrap();
        let decoder = flate2::read::MultiGzDecoder::new(&bomb[..]);
        let error = decompress_to_temp_within(
            decoder,
            Path::new("bomb.tar.gz"),
            Wrapping::Gzip,
            dir.path(),
            Some(2 * 1024 * 1024),
            None,
        )
        .expect_err("refused")
        .to_string();
        assert!(
            error.contains("decompresses to more than 2.0 MiB (2097152 bytes)"),
            "{error}"
        );
        assert!(error.contains("TMPDIR"), "{error}");

        // The same archive with room enough goes through.
        let decoder = flate2::read::MultiGzDecoder::new(&bomb[..]);
        let (file, _) = decompress_to_temp_within(
            decoder,
            Path::new("big.tar.gz"),
            Wrapping::Gzip,
            dir.path(),
            Some(32 * 1024 * 1024),
            None,
        )
        .unwrap();
        assert_eq!(file.metadata().unwrap().len(), tar.len() as u64);
    }

    #[test]
    fn the_room_for_decompressing_is_most_of_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let room = room_in(dir.path()).expect("statvfs works on a temp dir");
        let stat = rustix::fs::statvfs(dir.path()).unwrap();
        let free = stat.f_bavail * stat.f_frsize;
        // (Others may write between the two looks.)
        let expected = free - free / 20;
        assert!(
            room.abs_diff(expected) < 256 * 1024 * 1024,
            "{room} bytes of room, expected about {expected}"
        );
    }

    #[test]
    fn normalize_accepts_relative_and_refuses_escapes() {
        assert_eq!(normalize("./a/b").as_deref(), Some("a/b"));
        assert_eq!(normalize("a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("a/../../b"), None);
        assert_eq!(normalize("."), None);
    }

    #[test]
    fn symlink_targets_resolve_inside_the_archive() {
        assert_eq!(
            resolve_symlink_target("abc/layer.tar", "../def/layer.tar").as_deref(),
            Some("def/layer.tar")
        );
        assert_eq!(
            resolve_symlink_target("abc/layer.tar", "../../x"),
            None,
            "climbing above the root"
        );
        assert_eq!(resolve_symlink_target("abc/layer.tar", "/etc/passwd"), None);
    }

    fn tar_with(build: impl FnOnce(&mut tar::Builder<&mut Vec<u8>>)) -> File {
        let mut bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut bytes);
            build(&mut builder);
            builder.finish().unwrap();
        }
        let mut file = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut file, &bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        file
    }

    fn append_file(builder: &mut tar::Builder<&mut Vec<u8>>, name: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    }

    fn append_symlink(builder: &mut tar::Builder<&mut Vec<u8>>, name: &str, target: &str) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, name, target).unwrap();
    }

    #[test]
    fn index_resolves_files_and_symlinks() {
        let file = tar_with(|b| {
            append_file(b, "a/layer.tar", b"layer bytes");
            append_symlink(b, "b/layer.tar", "../a/layer.tar");
        });
        let index = TarIndex::build(file, Path::new("x.tar")).unwrap();
        for name in ["a/layer.tar", "b/layer.tar"] {
            let data = index.source(name).unwrap().read_all().unwrap();
            assert_eq!(&data[..], b"layer bytes");
        }
        assert!(matches!(
            index.source("c/layer.tar"),
            Err(SourceError::Missing(_))
        ));
    }

    #[test]
    fn layers_of_a_gzip_wrapped_tar_are_started_on_while_it_is_decompressed() {
        // Text-like bytes over several compression chunks, so there is something to prepare.
        let layer: Vec<u8> = (0u32..)
            .flat_map(|i| format!("{i} some layer content\n").into_bytes())
            .take(3 * crate::compress::Codec::Gzip(1).chunk_size() + 5)
            .collect();
        let other = vec![7u8; layer.len()];
        let mut tar = Vec::new();
        io::copy(
            &mut tar_with(|b| {
                append_file(b, "abc/layer.tar", &layer);
                append_symlink(b, "def/layer.tar", "../abc/layer.tar");
                append_file(b, "blobs/big", &other);
            }),
            &mut tar,
        )
        .unwrap();
        let mut gzipped = tempfile::tempfile().unwrap();
        let mut encoder = flate2::write::GzEncoder::new(&mut gzipped, flate2::Compression::fast());
        io::Write::write_all(&mut encoder, &tar).unwrap();
        encoder.finish().unwrap();
        gzipped.seek(SeekFrom::Start(0)).unwrap();

        let compression = Compression::Gzip { level: 1 };
        let (store, wrapping) = Store::from_file(
            gzipped,
            Path::new("x.tar.gz"),
            &std::env::temp_dir(),
            Some(compression),
        )
        .unwrap();
        assert_eq!(wrapping, Wrapping::Gzip);
        for name in ["abc/layer.tar", "def/layer.tar"] {
            let source = store.source(name).unwrap();
            let chunks = source.prepared_chunks().expect("a layer body is prepared");
            assert!(
                !chunks.is_empty(),
                "at least the first chunk is always taken"
            );
            assert_eq!(&source.read_all().unwrap()[..], &layer[..]);
        }
        let other_source = store.source("blobs/big").unwrap();
        assert!(
            other_source.prepared_chunks().is_none(),
            "only legacy layer bodies are prepared"
        );
        assert_eq!(&other_source.read_all().unwrap()[..], &other[..]);

        // What is streamed with the prepared chunks is what compressing it all gives.
        let source = store.source("abc/layer.tar").unwrap();
        let mut streamed = Vec::new();
        compression
            .compress_source(&source, &mut source.open(), &mut streamed)
            .unwrap();
        let mut expected = Vec::new();
        crate::compress::compress(compression.codec(), &mut &layer[..], &mut expected).unwrap();
        assert_eq!(streamed, expected);
    }

    #[test]
    fn symlink_loops_are_reported() {
        let file = tar_with(|b| {
            append_symlink(b, "a", "b");
            append_symlink(b, "b", "a");
        });
        let index = TarIndex::build(file, Path::new("x.tar")).unwrap();
        let error = index.source("a").unwrap_err().to_string();
        assert!(error.contains("loop"), "{error}");
    }

    #[test]
    fn duplicate_entries_are_refused() {
        let file = tar_with(|b| {
            append_file(b, "manifest.json", b"[]");
            append_file(b, "./manifest.json", b"[]");
        });
        let error = TarIndex::build(file, Path::new("x.tar"))
            .err()
            .expect("duplicates must fail")
            .to_string();
        assert!(error.contains("twice"), "{error}");
    }
}
