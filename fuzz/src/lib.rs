//! Turns fuzz input into an image archive the readers can get past their digest checks.
//!
//! Random bytes almost never make a tar, and a mutated manifest almost never names the digest
//! of a blob, so the readers would only ever see their first error. The structured targets
//! therefore take a small text format, which libFuzzer mutates well (see `dictionary.txt`):
//!
//! ```text
//! === blob
//! <bytes: stored as blobs/sha256/<digest of these bytes>>
//! === index.json
//! {"schemaVersion":2,"manifests":[{"mediaType":"...","digest":"@D3","size":@S3}]}
//! === link a/layer.tar ../b/layer.tar
//! ```
//!
//! In every name and body, `@D<n>`, `@H<n>` and `@S<n>` become the digest, hex digest and size
//! of the `n`-th blob record (1-based, earlier records only), so documents can point at blobs
//! whatever the mutations did to them. Input that does not start with `=== ` is used as a tar
//! as it is (the committed fixtures seed that path).

use ecr_push::blob::sha256_digest;

struct Blob {
    digest: String,
    size: usize,
}

/// Replaces `@D<n>`, `@H<n>`, `@S<n>` with facts of earlier blobs.
fn substitute(text: &[u8], blobs: &[Blob]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'@' && i + 1 < text.len() {
            let kind = text[i + 1];
            let digits = text[i + 2..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if matches!(kind, b'D' | b'H' | b'S') && (1..=3).contains(&digits) {
                let n: usize = std::str::from_utf8(&text[i + 2..i + 2 + digits])
                    .unwrap()
                    .parse()
                    .unwrap();
                if let Some(blob) = n.checked_sub(1).and_then(|n| blobs.get(n)) {
                    match kind {
                        b'D' => out.extend_from_slice(blob.digest.as_bytes()),
                        b'H' => out.extend_from_slice(
                            blob.digest.trim_start_matches("sha256:").as_bytes(),
                        ),
                        _ => out.extend_from_slice(blob.size.to_string().as_bytes()),
                    }
                    i += 2 + digits;
                    continue;
                }
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// The archive the input describes (see the module docs).
pub fn archive(data: &[u8]) -> Vec<u8> {
    let Some(rest) = data.strip_prefix(b"=== ") else {
        return data.to_vec();
    };
    let mut builder = tar::Builder::new(Vec::new());
    let mut blobs: Vec<Blob> = Vec::new();
    for record in split(rest, b"\n=== ") {
        let (head, body) = match record.iter().position(|&b| b == b'\n') {
            Some(at) => (&record[..at], &record[at + 1..]),
            None => (record, &[][..]),
        };
        let head = substitute(head, &blobs);
        let head = String::from_utf8_lossy(&head).into_owned();
        let body = substitute(body, &blobs);
        let mut words = head.split(' ');
        let result = match (words.next(), words.next(), words.next()) {
            (Some("blob"), None, None) => {
                let digest = sha256_digest(&body).to_string();
                let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
                blobs.push(Blob {
                    digest,
                    size: body.len(),
                });
                append_file(&mut builder, &path, &body)
            }
            (Some("link"), Some(path), Some(target)) => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, path, target)
            }
            _ => append_file(&mut builder, &head, &body),
        };
        // Names the tar crate refuses (`..`, absolute) are simply left out here; the
        // tar_index target gets raw hostile headers.
        let _ = result;
    }
    builder.into_inner().unwrap_or_default()
}

fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    builder.append_data(&mut header, path, body)
}

fn split<'a>(data: &'a [u8], separator: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current
            .windows(separator.len())
            .position(|window| window == separator)
        {
            Some(at) => {
                rest = Some(&current[at + separator.len()..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}
