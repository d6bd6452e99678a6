//! The I/O seam: every write, resize and sync of the segment goes through a [`Backend`].
//!
//! Reads go through the memory map instead (that is the point of the design), so the trait is only
//! what a writer needs. Tests wrap [`FileBackend`] to fail the Nth call or to record writes and
//! syncs, which is how crash and fault behaviour is checked without pulling a power cord.

use std::fs::File;
use std::io;

use super::platform;

/// File operations the engine performs on the segment file.
///
/// Implementations must behave like a file: a `write_at` that returns `Ok` is visible to every
/// later read of the file (including through a memory map), and `sync_data` returns `Ok` only once
/// everything written before it is on stable storage.
#[allow(clippy::len_without_is_empty)] // `len` is a file's length, not a collection's
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The file's current length in bytes.
    ///
    /// # Errors
    /// The I/O error of the underlying call.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; an error if the file ends first.
    ///
    /// # Errors
    /// The I/O error of the underlying call.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`.
    ///
    /// # Errors
    /// The I/O error of the underlying call.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Grows or shrinks the file to `len` bytes. Growth must allocate the space (not leave a
    /// hole): the engine maps the file, and a page that cannot be allocated when touched through
    /// a map is a `SIGBUS`, where a full disk here is a clean error.
    ///
    /// # Errors
    /// The I/O error of the underlying call.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written data (and the metadata needed to read it back, such as the file length)
    /// durable, like `fdatasync`.
    ///
    /// # Errors
    /// The I/O error of the underlying call.
    fn sync_data(&self) -> io::Result<()>;

    /// Starts writing `len` bytes at `offset` back to the disk without waiting for it, so that a
    /// later [`Backend::sync_data`] has less left to do. A hint: it promises no durability. The
    /// default does nothing.
    ///
    /// # Errors
    /// The I/O error of the underlying call.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Copies `len` bytes of `src` from `src_offset` to `offset` in this file inside the kernel
    /// (`copy_file_range`), without a trip through user space. `Ok(false)` means this backend or
    /// file system cannot (nothing was written): the caller writes the bytes with
    /// [`Backend::write_at`] instead. The default always says so, so a wrapping backend sees
    /// every byte written through `write_at`.
    ///
    /// # Errors
    /// The I/O error of the underlying call, once some bytes may have been copied.
    fn copy_from(&self, src: &File, src_offset: u64, len: u64, offset: u64) -> io::Result<bool> {
        let _ = (src, src_offset, len, offset);
        Ok(false)
    }

    /// Turns `len` bytes from `offset` into zeros without changing the file's length, freeing
    /// their space where the file system can (`FALLOC_FL_PUNCH_HOLE`). The default writes zeros.
    ///
    /// # Errors
    /// The I/O error of the underlying call.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX).min(1 << 20)];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// The real backend: a [`File`] with positional reads and writes.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
}

impl FileBackend {
    /// Wraps an open file; it must be open for reading and writing.
    pub fn new(file: File) -> Self {
        FileBackend { file }
    }
}

impl Backend for FileBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        platform::read_exact_at(&self.file, buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        platform::write_all_at(&self.file, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        allocate(&self.file, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        platform::start_writeback(&self.file, offset, len)
    }

    fn copy_from(&self, src: &File, src_offset: u64, len: u64, offset: u64) -> io::Result<bool> {
        platform::copy_range(src, src_offset, &self.file, offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if platform::punch_hole(&self.file, offset, len)? {
            return Ok(());
        }
        // No hole punching here: zero only what can hold data, the written part.
        let written = self.written_len(offset, len)?;
        let zeros = vec![0u8; usize::try_from(written).unwrap_or(0).min(1 << 20)];
        let mut at = offset;
        while at < offset + written {
            let n = (offset + written - at).min(zeros.len() as u64) as usize;
            platform::write_all_at(&self.file, &zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

impl FileBackend {
    /// How many bytes from `offset` (at most `len`) hold anything but a long run of zeros.
    fn written_len(&self, offset: u64, len: u64) -> io::Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = offset;
        let mut last_nonzero = offset;
        while at < offset + len {
            let n = (offset + len - at).min(buf.len() as u64) as usize;
            platform::read_exact_at(&self.file, &mut buf[..n], at)?;
            match buf[..n].iter().rposition(|&b| b != 0) {
                Some(i) => last_nonzero = at + i as u64 + 1,
                None => break,
            }
            at += n as u64;
        }
        Ok(last_nonzero - offset)
    }
}

/// Sets `file`'s length to `len`, allocating the blocks of any growth (`fallocate`) so that a full
/// disk is reported here rather than when a mapped page is first touched. Falls back to a sparse
/// `set_len` where blocks cannot be allocated ahead (see [`platform::allocate`]).
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    let current = file.metadata()?.len();
    if len > current && platform::allocate(file, current, len - current)? {
        return Ok(());
    }
    file.set_len(len)
}

/// Allocates every block of the first `len` bytes of `file` (holes included), so writes through
/// a map of them cannot fault on a full disk. Already allocated blocks cost nothing. Where blocks
/// cannot be allocated ahead, the file is left as it is.
pub(crate) fn allocate_all(file: &File, len: u64) -> io::Result<()> {
    platform::allocate(file, 0, len).map(|_| ())
}
