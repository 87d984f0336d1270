//! Whole-body buffering: small bodies stay in memory as `Bytes`, large ones are spooled to a
//! temporary file, so neither a slow client nor a slow reader ever holds a worker thread.

use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tempfile::NamedTempFile;

/// Boxed error of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the proxy sends, both to clients and to the worker server.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A fully received body.
#[derive(Debug)]
pub enum Buffered {
    /// Held in memory (one allocation when the body arrived in one frame).
    Memory(Bytes),
    /// Spooled to a temporary file, removed when this value is dropped.
    File { file: NamedTempFile, len: u64 },
}

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The body is longer than allowed.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// Reading the body failed (broken framing, connection lost).
    #[error("reading body: {0}")]
    Read(BoxError),
    /// Writing the spool file failed.
    #[error("spooling body: {0}")]
    Spool(#[from] io::Error),
}

impl Buffered {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Buffered::Memory(b) => b.len() as u64,
            Buffered::File { len, .. } => *len,
        }
    }

    /// True when the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh body reading the buffered bytes from the start (it can be called again for a retry).
    pub fn to_body(&self) -> io::Result<ProxyBody> {
        match self {
            Buffered::Memory(b) => Ok(full(b.clone())),
            Buffered::File { file, .. } => {
                // An independent open file description: its offset is not shared with other readers.
                let f = tokio::fs::File::from_std(file.reopen()?);
                let stream = tokio_util::io::ReaderStream::with_capacity(f, SPOOL_BATCH)
                    .map_ok(Frame::data)
                    .map_err(|e| -> BoxError { Box::new(e) });
                Ok(UnsyncBoxBody::new(StreamBody::new(stream)))
            }
        }
    }
}

/// A body of known bytes.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    UnsyncBoxBody::new(Full::new(b.into()).map_err(|never| match never {}))
}

/// Spooled bytes are handed to a blocking thread in batches of this size: a thread hand-off per
/// body frame (a few KiB each) cost more than writing the file.
const SPOOL_BATCH: usize = 256 * 1024;

/// Reads `body` to its end: in memory up to `memory_limit` bytes, then into a temporary file in
/// `spool_dir`; more than `max` bytes fails with [`BufferError::TooLarge`].
pub async fn collect<B>(
    mut body: B,
    max: Option<u64>,
    memory_limit: usize,
    spool_dir: Option<&Path>,
) -> Result<Buffered, BufferError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    // Chunks not yet written: all of them while in memory, the current batch once spooling.
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut pending: usize = 0;
    let mut total: u64 = 0;
    let mut spool: Option<(NamedTempFile, std::fs::File)> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BufferError::Read(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if max.is_some_and(|m| total > m) {
            return Err(BufferError::TooLarge(max.unwrap_or_default()));
        }
        pending += data.len();
        chunks.push(data);
        if spool.is_none() && total > memory_limit as u64 {
            let named = match spool_dir {
                Some(d) => NamedTempFile::new_in(d)?,
                None => NamedTempFile::new()?,
            };
            let file = named.reopen()?;
            spool = Some((named, file));
        }
        if let Some((_, file)) = &mut spool
            && pending >= SPOOL_BATCH
        {
            write_batch(file, std::mem::take(&mut chunks)).await?;
            pending = 0;
        }
    }
    if let Some((named, mut file)) = spool {
        write_batch(&mut file, chunks).await?;
        return Ok(Buffered::File {
            file: named,
            len: total,
        });
    }
    Ok(Buffered::Memory(concat(chunks, total as usize)))
}

/// Appends `chunks` to the spool file on a blocking thread.
async fn write_batch(file: &mut std::fs::File, chunks: Vec<Bytes>) -> io::Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let mut f = file.try_clone()?;
    tokio::task::spawn_blocking(move || {
        for c in chunks {
            f.write_all(&c)?;
        }
        Ok(())
    })
    .await
    .map_err(io::Error::other)?
}

fn concat(mut chunks: Vec<Bytes>, total: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut out = Vec::with_capacity(total);
            for c in chunks {
                out.extend_from_slice(&c);
            }
            out.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn chunked(parts: Vec<&'static [u8]>) -> impl Body<Data = Bytes, Error = io::Error> + Unpin {
        StreamBody::new(stream::iter(
            parts
                .into_iter()
                .map(|p| Ok(Frame::data(Bytes::from_static(p)))),
        ))
    }

    async fn read_all(b: ProxyBody) -> Vec<u8> {
        b.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory() {
        let b = collect(chunked(vec![b"ab", b"cd"]), Some(10), 16, None)
            .await
            .unwrap();
        assert!(matches!(b, Buffered::Memory(_)));
        assert_eq!(read_all(b.to_body().unwrap()).await, b"abcd");
    }

    #[tokio::test]
    async fn large_bodies_spool_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let b = collect(
            chunked(vec![b"0123456789", b"abcdefghij", b"XYZ"]),
            None,
            12,
            Some(dir.path()),
        )
        .await
        .unwrap();
        assert!(matches!(b, Buffered::File { len: 23, .. }));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Two independent reads, as for a retry.
        let first = b.to_body().unwrap();
        let second = b.to_body().unwrap();
        assert_eq!(read_all(first).await, b"0123456789abcdefghijXYZ");
        assert_eq!(read_all(second).await, b"0123456789abcdefghijXYZ");
        drop(b);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spool file removed"
        );
    }

    #[tokio::test]
    async fn limit_is_enforced() {
        let err = collect(chunked(vec![b"0123456789", b"a"]), Some(10), 4, None)
            .await
            .unwrap_err();
        assert!(matches!(err, BufferError::TooLarge(10)));
    }
}
