//! Python squirrel's directory layout: one gzip file `KEY.gz` per shard.
//!
//! This is what squirrel-core 0.20.2's `SquirrelStore` reads and writes:
//!
//! * `set(shard, key)` writes `{url}/{key}.gz`, a gzip stream of the shard's payload (its samples'
//!   MessagePack, concatenated). A key with `/` in it names a file in a subdirectory; Python only
//!   writes it when the subdirectory exists, this module creates it.
//! * `keys()` lists the entries of `{url}` whose names end in `.gz`, sorted, minus that suffix
//!   (`rsplit(".gz", 1)[0]`); `keys(nested=True)` also descends into subdirectories and yields
//!   `sub/key`. [`SquirrelDir::keys`] does the same with `nested` as a parameter, lists files only
//!   (not directories that happen to end in `.gz`) and sorts nested keys too.
//!
//! Keys are checked before they touch the file system: a key that is empty, absolute, has an empty,
//! `.` or `..` component, a NUL or a backslash could land outside the directory, and is refused.
//!
//! Writes go to a hidden temporary file in the target directory (its name does not end in `.gz`,
//! so neither squirrel nor this module ever lists it), are synced, then renamed over `KEY.gz`: a
//! crash leaves the old shard or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

/// The suffix squirrel gives shard files.
pub const SHARD_SUFFIX: &str = ".gz";

/// The longest file name, in bytes, that the common file systems (ext4, XFS, btrfs, APFS, tmpfs)
/// accept: `NAME_MAX`.
pub const MAX_NAME_LEN: usize = 255;

/// Why a squirrel directory operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SquirrelDirError {
    /// The key cannot name a shard file inside the directory.
    #[error("invalid shard key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A file system call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A shard file is not a valid gzip stream (corrupt, truncated, or a checksum mismatch).
    #[error("{path} is not a valid gzip stream: {source}")]
    Gzip {
        /// The shard file.
        path: PathBuf,
        /// What the decoder reported.
        #[source]
        source: io::Error,
    },
    /// A shard file decompresses to more bytes than allowed.
    #[error("{path} decompresses to more than {limit} bytes")]
    TooLarge {
        /// The shard file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
}

impl From<SquirrelDirError> for crate::Error {
    fn from(e: SquirrelDirError) -> crate::Error {
        match e {
            SquirrelDirError::InvalidKey { key, reason } => {
                crate::Error::InvalidKey { key, reason }
            }
            SquirrelDirError::Io { path, source } => crate::Error::io(path, source),
            SquirrelDirError::Gzip { path, source } => {
                crate::Error::corruption(path, 0, None, format!("invalid gzip stream: {source}"))
            }
            SquirrelDirError::TooLarge { path, limit } => crate::Error::corruption(
                path,
                0,
                None,
                format!("decompresses to more than {limit} bytes"),
            ),
        }
    }
}

/// Checks that `key` names a file inside a squirrel directory.
///
/// # Errors
///
/// [`SquirrelDirError::InvalidKey`] for a key that is empty, absolute, has an empty, `.` or `..`
/// component, contains NUL or a backslash, has a directory component ending in `.gz` (which
/// squirrel's `keys()` would list as a shard), or a component too long for a file name
/// ([`MAX_NAME_LEN`] bytes, `.gz` included for the last).
pub fn validate_key(key: &str) -> Result<(), SquirrelDirError> {
    let refuse = |reason| {
        Err(SquirrelDirError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return refuse("empty");
    }
    if key.contains('\0') {
        return refuse("contains NUL");
    }
    // A path separator on Windows, and never produced by squirrel.
    if key.contains('\\') {
        return refuse("contains a backslash");
    }
    if key.starts_with('/') {
        return refuse("absolute");
    }
    let mut components = key.split('/').peekable();
    while let Some(c) = components.next() {
        match c {
            "" => return refuse("empty path component"),
            "." | ".." => return refuse("`.` or `..` path component"),
            _ if components.peek().is_some() && c.ends_with(SHARD_SUFFIX) => {
                return refuse("directory component ends in .gz");
            }
            _ if components.peek().is_some() && c.len() > MAX_NAME_LEN => {
                return refuse("directory component longer than 255 bytes");
            }
            _ if components.peek().is_none() && c.len() + SHARD_SUFFIX.len() > MAX_NAME_LEN => {
                return refuse("file name (last component plus .gz) longer than 255 bytes");
            }
            _ => {}
        }
    }
    Ok(())
}

/// A squirrel store directory.
#[derive(Debug, Clone)]
pub struct SquirrelDir {
    root: PathBuf,
    max_shard_bytes: u64,
    level: u32,
}

impl SquirrelDir {
    /// Largest payload [`SquirrelDir::read`] accepts by default: 1 GiB, the default decompression
    /// limit of [`crate::serializer::MessagepackSerializer`] (a 1 MB gzip file can hold 1 GiB of
    /// zeros).
    pub const DEFAULT_MAX_SHARD_BYTES: u64 = 1 << 30;
    /// gzip level [`SquirrelDir::write`] uses by default (zlib's default).
    pub const DEFAULT_LEVEL: u32 = 6;

    /// The squirrel directory at `root` (which need not exist until written to).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SquirrelDir {
            root: root.into(),
            max_shard_bytes: Self::DEFAULT_MAX_SHARD_BYTES,
            level: Self::DEFAULT_LEVEL,
        }
    }

    /// Refuses shards that decompress to more than `bytes`.
    #[must_use]
    pub fn max_shard_bytes(mut self, bytes: u64) -> Self {
        self.max_shard_bytes = bytes;
        self
    }

    /// Writes with gzip level `level` (0..=9; higher values are taken as 9).
    #[must_use]
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// The directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds shard `key`: `root/key.gz`.
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::InvalidKey`], see [`validate_key`].
    pub fn path(&self, key: &str) -> Result<PathBuf, SquirrelDirError> {
        validate_key(key)?;
        let mut path = self.root.clone();
        path.extend(key.split('/'));
        let mut name = path.into_os_string();
        name.push(SHARD_SUFFIX);
        Ok(PathBuf::from(name))
    }

    /// The shard keys, sorted. With `nested`, keys in subdirectories too, as `sub/key`.
    ///
    /// A missing directory has no keys, as in squirrel. Entries whose names are not UTF-8 or do not
    /// make valid keys are skipped (see [`SquirrelDir::keys_and_skipped`] to learn which), and so
    /// are symbolic links to directories (which could loop).
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::Io`] when a directory cannot be read.
    pub fn keys(&self, nested: bool) -> Result<Vec<String>, SquirrelDirError> {
        self.keys_and_skipped(nested).map(|(keys, _)| keys)
    }

    /// As [`SquirrelDir::keys`], and the paths skipped because their names make no valid key:
    /// shard files (names ending in `.gz`) whose names are not UTF-8 or fail [`validate_key`], and
    /// with `nested`, subdirectories whose names are not UTF-8. Both lists are sorted.
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::Io`] when a directory cannot be read.
    pub fn keys_and_skipped(
        &self,
        nested: bool,
    ) -> Result<(Vec<String>, Vec<PathBuf>), SquirrelDirError> {
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        if !self.root.exists() {
            return Ok((keys, skipped));
        }
        let mut dirs = vec![(self.root.clone(), String::new())];
        while let Some((dir, prefix)) = dirs.pop() {
            let io = |source| SquirrelDirError::Io {
                path: dir.clone(),
                source,
            };
            for entry in fs::read_dir(&dir).map_err(io)? {
                let entry = entry.map_err(io)?;
                let file_type = entry.file_type().map_err(io)?;
                // Follow a link only to see whether it is a file: Python opens links to files.
                let is_file = file_type.is_file()
                    || (file_type.is_symlink()
                        && entry.path().metadata().is_ok_and(|m| m.is_file()));
                let os_name = entry.file_name();
                let Ok(name) = os_name.into_string() else {
                    let name = entry.file_name();
                    let shard =
                        is_file && name.as_encoded_bytes().ends_with(SHARD_SUFFIX.as_bytes());
                    if shard || (nested && file_type.is_dir()) {
                        skipped.push(entry.path());
                    }
                    continue;
                };
                if file_type.is_dir() {
                    if nested {
                        dirs.push((entry.path(), format!("{prefix}{name}/")));
                    }
                } else if let Some(stem) = name.strip_suffix(SHARD_SUFFIX).filter(|_| is_file) {
                    let key = format!("{prefix}{stem}");
                    if validate_key(&key).is_ok() {
                        keys.push(key);
                    } else {
                        skipped.push(entry.path());
                    }
                }
            }
        }
        keys.sort();
        skipped.sort();
        Ok((keys, skipped))
    }

    /// Whether shard `key` exists.
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::InvalidKey`].
    pub fn contains(&self, key: &str) -> Result<bool, SquirrelDirError> {
        Ok(self.path(key)?.is_file())
    }

    /// The payload of shard `key`: its gunzipped bytes, the concatenated samples.
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::InvalidKey`]; [`SquirrelDirError::Io`] (`NotFound` for a missing
    /// shard); [`SquirrelDirError::Gzip`] for a corrupt file; [`SquirrelDirError::TooLarge`].
    pub fn read(&self, key: &str) -> Result<Vec<u8>, SquirrelDirError> {
        read_shard_file(&self.path(key)?, self.max_shard_bytes)
    }

    /// Writes `payload` (concatenated samples) as shard `key`, replacing any shard of that key.
    /// Creates the directory, and subdirectories for keys with `/`, as needed. Returns the file.
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::InvalidKey`]; [`SquirrelDirError::Io`].
    pub fn write(&self, key: &str, payload: &[u8]) -> Result<PathBuf, SquirrelDirError> {
        let path = self.path(key)?;
        write_shard_file(&path, payload, self.level)?;
        Ok(path)
    }

    /// Writes shard `key` as [`SquirrelDir::write`] does, with the payload streamed: `fill` writes
    /// it into the gzip encoder in as many pieces as it likes, so no more than a piece need be in
    /// memory. When `fill` fails, or a write into the file fails, nothing replaces the old shard.
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::InvalidKey`] and [`SquirrelDirError::Io`], converted into `E`; `fill`'s
    /// own error.
    pub fn write_with<E: From<SquirrelDirError>>(
        &self,
        key: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<PathBuf, E> {
        let path = self.path(key)?;
        write_shard_file_with(&path, self.level, fill)?;
        Ok(path)
    }

    /// Opens shard `key` for reading its payload as a stream; see [`ShardFileReader`].
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::InvalidKey`]; [`SquirrelDirError::Io`] (`NotFound` for a missing
    /// shard).
    pub fn open(&self, key: &str) -> Result<ShardFileReader, SquirrelDirError> {
        open_shard_file(&self.path(key)?, self.max_shard_bytes)
    }

    /// Removes shard `key`; returns whether it existed.
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::InvalidKey`]; [`SquirrelDirError::Io`].
    pub fn remove(&self, key: &str) -> Result<bool, SquirrelDirError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(SquirrelDirError::Io { path, source }),
        }
    }
}

/// A shard file's payload, gunzipped as it is read, refusing more than a limit: the payload is
/// never held whole, and nothing is allocated from a size the file claims.
pub struct ShardFileReader {
    path: PathBuf,
    inner: MultiGzDecoder<io::BufReader<File>>,
    limit: u64,
    read: u64,
    failed: bool,
}

impl std::fmt::Debug for ShardFileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardFileReader")
            .field("path", &self.path)
            .field("limit", &self.limit)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl ShardFileReader {
    /// Reads the next payload bytes into `buf`; 0 at the end of the stream.
    ///
    /// # Errors
    ///
    /// [`SquirrelDirError::Gzip`] for a corrupt or truncated stream;
    /// [`SquirrelDirError::TooLarge`] as soon as the payload passes the limit (the bytes past it
    /// are not handed out); [`SquirrelDirError::Io`].
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, SquirrelDirError> {
        if self.failed || buf.is_empty() {
            return Ok(0);
        }
        let n = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    self.failed = true;
                    return Err(match source.kind() {
                        io::ErrorKind::InvalidData
                        | io::ErrorKind::InvalidInput
                        | io::ErrorKind::UnexpectedEof => SquirrelDirError::Gzip {
                            path: self.path.clone(),
                            source,
                        },
                        _ => SquirrelDirError::Io {
                            path: self.path.clone(),
                            source,
                        },
                    });
                }
            }
        };
        self.read = self.read.saturating_add(n as u64);
        if self.read > self.limit {
            self.failed = true;
            return Err(SquirrelDirError::TooLarge {
                path: self.path.clone(),
                limit: self.limit,
            });
        }
        Ok(n)
    }

    /// Reads the rest of the payload into `out`, or stops once `out` holds more than `at_most`
    /// bytes; returns whether the end was reached.
    ///
    /// # Errors
    ///
    /// As [`ShardFileReader::read_chunk`].
    pub fn read_up_to(
        &mut self,
        out: &mut Vec<u8>,
        at_most: usize,
    ) -> Result<bool, SquirrelDirError> {
        let mut chunk = vec![0u8; READ_CHUNK];
        while out.len() <= at_most {
            let n = self.read_chunk(&mut chunk)?;
            if n == 0 {
                return Ok(true);
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(false)
    }

    /// Payload bytes read so far.
    #[must_use]
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The shard file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The bytes [`ShardFileReader`] reads at a time.
const READ_CHUNK: usize = 256 << 10;

/// Opens a shard file for streaming its payload, refusing more than `max_bytes`.
///
/// # Errors
///
/// [`SquirrelDirError::Io`] when the file cannot be opened.
pub fn open_shard_file(path: &Path, max_bytes: u64) -> Result<ShardFileReader, SquirrelDirError> {
    let file = File::open(path).map_err(|source| SquirrelDirError::Io {
        path: path.to_owned(),
        source,
    })?;
    // Python's gzip module reads multi-member streams, so this does too.
    Ok(ShardFileReader {
        path: path.to_owned(),
        inner: MultiGzDecoder::new(io::BufReader::new(file)),
        limit: max_bytes,
        read: 0,
        failed: false,
    })
}

/// Gunzips a shard file into its payload, refusing more than `max_bytes`.
///
/// The buffer grows as bytes arrive (never from a size the file claims), and reading stops one
/// byte past the limit.
///
/// # Errors
///
/// [`SquirrelDirError::Io`]; [`SquirrelDirError::Gzip`]; [`SquirrelDirError::TooLarge`].
pub fn read_shard_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, SquirrelDirError> {
    let mut reader = open_shard_file(path, max_bytes)?;
    let mut payload = Vec::new();
    reader.read_up_to(&mut payload, usize::MAX)?;
    Ok(payload)
}

/// Gzips `payload` into `path` atomically: a synced temporary file renamed into place.
///
/// # Errors
///
/// [`SquirrelDirError::Io`].
pub fn write_shard_file(path: &Path, payload: &[u8], level: u32) -> Result<(), SquirrelDirError> {
    write_shard_file_with(path, level, |w: &mut dyn Write| {
        w.write_all(payload).map_err(|source| SquirrelDirError::Io {
            path: path.to_owned(),
            source,
        })
    })
}

/// A writer that keeps the first error of the writer it wraps, so the caller reports that error
/// with the file's path whatever the filler made of it.
struct KeepError<W> {
    inner: W,
    error: Option<io::Error>,
}

impl<W: Write> Write for KeepError<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| {
            if self.error.is_none() {
                self.error = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| {
            if self.error.is_none() {
                self.error = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

/// Gzips what `fill` writes into `path` atomically: a synced temporary file renamed into place.
///
/// # Errors
///
/// [`SquirrelDirError::Io`] converted into `E`; `fill`'s own error.
pub fn write_shard_file_with<E: From<SquirrelDirError>>(
    path: &Path,
    level: u32,
    fill: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<(), E> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SquirrelDirError::Io { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir_all_synced(dir)?;
    let (tmp_path, file) = create_temp(dir)?;
    // Removes the temporary file on any early return.
    let guard = TempGuard(Some(tmp_path.clone()));
    let mut gz = KeepError {
        inner: GzEncoder::new(BufWriter::new(file), Compression::new(level.min(9))),
        error: None,
    };
    let filled = fill(&mut gz);
    if let Some(e) = gz.error.take() {
        return Err(io(&tmp_path)(e).into());
    }
    filled?;
    let file = gz
        .inner
        .finish()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .map_err(io(&tmp_path))?;
    // Synced before the rename, or a crash could leave the new name pointing at lost data.
    file.sync_all().map_err(io(&tmp_path))?;
    drop(file);
    fs::rename(&tmp_path, path).map_err(io(path))?;
    guard.defuse();
    // Persist the rename itself; not every platform can open a directory, so this is best effort.
    sync_dir(dir);
    Ok(())
}

/// Syncs a directory, best effort (not every platform can open one).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `dir` and its missing ancestors, syncing the parent of each directory it creates, so a
/// crash cannot forget a directory whose files were synced. Returns the directories it created,
/// outermost first.
///
/// # Errors
///
/// [`SquirrelDirError::Io`] naming the directory that could not be created (`NotADirectory` when a
/// file stands in the way).
pub fn create_dir_all_synced(dir: &Path) -> Result<Vec<PathBuf>, SquirrelDirError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
        match fs::metadata(d) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(SquirrelDirError::Io {
                    path: d.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "exists and is not a directory",
                    ),
                });
            }
            Err(_) => missing.push(d.to_owned()),
        }
        at = d.parent();
    }
    missing.reverse();
    for d in &missing {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Made meanwhile by another writer (rayon exports subdirectories in parallel).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(source) => {
                return Err(SquirrelDirError::Io {
                    path: d.clone(),
                    source,
                });
            }
        }
        let parent = d
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent);
    }
    Ok(missing)
}

/// Creates a new hidden temporary file in `dir`. Its name is short whatever the target's (a
/// target name near the 255-byte limit must not make the temporary name too long) and does not end
/// in `.gz`, so no listing takes it for a shard.
fn create_temp(dir: &Path) -> Result<(PathBuf, File), SquirrelDirError> {
    let mut last_err = None;
    for _ in 0..16 {
        let tmp = dir.join(format!(".sq-{:016x}.tmp", rand::random::<u64>()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(source) => return Err(SquirrelDirError::Io { path: tmp, source }),
        }
    }
    Err(SquirrelDirError::Io {
        path: dir.to_owned(),
        source: last_err.unwrap_or_else(|| io::Error::other("could not create a temporary file")),
    })
}

struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        for bad in [
            "", "/abs", "a//b", "a/", "../x", "a/../b", "./a", "a\0b", "a\\b", "d.gz/k",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "shard_0", "sub/key", "a.gz", "..a", "x/.y"] {
            assert!(validate_key(good).is_ok(), "{good:?}");
        }
    }
}
