//! The I/O seam: every write, resize and sync of the segment goes through a [`Backend`].
//!
//! Reads go through the memory map instead (that is the point of the design), so the trait is only
//! what a writer needs. Tests wrap [`FileBackend`] to fail the Nth call or to record writes and
//! syncs, which is how crash and fault behaviour is checked without pulling a power cord.

use std::fs::File;
use std::io;

use parking_lot::Mutex;

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
    /// Writes `parts` one after another from `offset`, like one [`Backend::write_at`] of their
    /// concatenation. The default writes them one by one; [`FileBackend`] on Linux hands them
    /// to the kernel as one long write (`pwritev`, up to 1024 parts a call), which also lets the
    /// page cache hold them in large folios; elsewhere it writes them one by one.
    ///
    /// # Errors
    /// The I/O error of the underlying call.
    fn write_vectored_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for part in parts {
            self.write_at(part, at)?;
            at += part.len() as u64;
        }
        Ok(())
    }
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
///
/// On Linux, the space this backend allocated ahead of the writer (its last growth, by
/// `fallocate`) is also mapped writable and shared, on file systems that overwrite blocks in
/// place (ext4, XFS, tmpfs; not btrfs or ZFS): a write of up to 64 KiB
/// inside it is a copy into the page cache instead of a `pwrite`, which costs about as much as
/// the rest of a small record's write. The guarantees are a `pwrite`'s: the bytes are in the
/// page cache when `write_at` returns (they survive a killed process) and `fdatasync` writes
/// them back (on Linux it covers pages dirtied through a map). Only blocks this backend
/// allocated itself are written through the map, so a full disk can never surface as a
/// `SIGBUS` there; a shrink, a hole punch or a failed allocation drops the map first, and writes
/// go back to `pwrite` until the next growth.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    /// The allocated, mapped range (Linux only; always `None` elsewhere).
    allocated: Mutex<Option<Allocated>>,
    /// The file system overwrites blocks in place ([`platform::overwrites_in_place`]): without
    /// that, a write through the map could need space, and nothing is written through one.
    in_place: bool,
}

/// Writes of at most this many bytes go through the map; longer ones are a `pwrite`, whose
/// kernel copy takes no page fault per 4 KiB.
pub(crate) const MAP_WRITE_MAX: usize = 64 << 10;

/// A writable shared map of file bytes `[offset, offset + map.len())`, every block of which this
/// backend allocated with `fallocate` since the file last shrank or had a hole punched.
#[derive(Debug)]
struct Allocated {
    offset: u64,
    map: memmap2::MmapRaw,
}

impl FileBackend {
    /// Wraps an open file; it must be open for reading and writing.
    pub fn new(file: File) -> Self {
        FileBackend {
            in_place: platform::overwrites_in_place(&file),
            file,
            allocated: Mutex::new(None),
        }
    }

    /// Writes `data` at `offset` through the map when it lies inside the allocated range;
    /// `false` when it does not (nothing was written).
    fn write_mapped(&self, data: &[u8], offset: u64) -> bool {
        if data.len() > MAP_WRITE_MAX {
            return false;
        }
        let guard = self.allocated.lock();
        let Some(a) = guard.as_ref() else {
            return false;
        };
        let Some(at) = offset
            .checked_sub(a.offset)
            .and_then(|at| usize::try_from(at).ok())
            .filter(|at| {
                at.checked_add(data.len())
                    .is_some_and(|end| end <= a.map.len())
            })
        else {
            return false;
        };
        // SAFETY: `[at, at + data.len())` lies inside the live map (checked just above), which
        // the guard keeps mapped; the map is of file bytes inside the file's length whose blocks
        // are allocated (`Allocated`), so touching them cannot fault for space; `data` is a
        // separate allocation (no overlap); the lock serialises every write through the map.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), a.map.as_mut_ptr().add(at), data.len());
        }
        true
    }

    /// The allocated, mapped range, if any (tests).
    #[cfg(test)]
    fn mapped(&self) -> Option<(u64, u64)> {
        self.allocated
            .lock()
            .as_ref()
            .map(|a| (a.offset, a.offset + a.map.len() as u64))
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
        if self.write_mapped(data, offset) {
            return Ok(());
        }
        platform::write_all_at(&self.file, data, offset)
    }

    // Elsewhere the trait's default: one write a part.
    #[cfg(target_os = "linux")]
    fn write_vectored_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        platform::write_vectored_all_at(&self.file, parts, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        // The map goes first: a map reaching past the end of a shrunk file is a SIGBUS.
        let mut allocated = self.allocated.lock();
        *allocated = None;
        let Some(from) = allocate(&self.file, len)? else {
            return Ok(());
        };
        if cfg!(target_os = "linux") && self.in_place {
            // A map that cannot be made only costs speed: writes stay `pwrite`s.
            *allocated = usize::try_from(len - from)
                .ok()
                .and_then(|n| {
                    memmap2::MmapOptions::new()
                        .offset(from)
                        .len(n)
                        .map_raw(&self.file)
                        .ok()
                })
                .map(|map| Allocated { offset: from, map });
        }
        Ok(())
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
        // A punched hole has no blocks: writing it through the map could fault on a full disk.
        *self.allocated.lock() = None;
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
/// `set_len` where blocks cannot be allocated ahead (see [`platform::allocate`]). Returns the
/// file's old length when it grew with every new block allocated: then `[old, len)` is space
/// a write can never fail to find.
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<Option<u64>> {
    let current = file.metadata()?.len();
    if len > current && platform::allocate(file, current, len - current)? {
        return Ok(Some(current));
    }
    file.set_len(len)?;
    Ok(None)
}

/// Allocates every block of the first `len` bytes of `file` (holes included), so writes through
/// a map of them cannot fault on a full disk. Already allocated blocks cost nothing. Where blocks
/// cannot be allocated ahead, the file is left as it is.
pub(crate) fn allocate_all(file: &File, len: u64) -> io::Result<()> {
    platform::allocate(file, 0, len).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(dir: &std::path::Path) -> FileBackend {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("f"))
            .expect("open");
        FileBackend::new(file)
    }

    fn read(b: &FileBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        b.read_at(&mut buf, offset).expect("read");
        buf
    }

    #[test]
    fn a_vectored_write_of_more_parts_than_one_call_takes_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = backend(dir.path());
        b.set_len(1 << 20).expect("grow");
        // 3000 parts (more than IOV_MAX), some empty, of lengths 0..=9, after a 100-byte gap.
        let parts: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; (i % 10) as usize])
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        b.write_vectored_at(&refs, 100).expect("vectored write");
        let whole = parts.concat();
        assert_eq!(read(&b, 100, whole.len()), whole);
        assert_eq!(read(&b, 0, 100), vec![0u8; 100], "nothing before it");
        let end = 100 + whole.len() as u64;
        assert_eq!(read(&b, end, 64), vec![0u8; 64], "nothing after it");
    }

    #[test]
    fn writes_inside_and_outside_the_mapped_growth_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = backend(dir.path());
        b.write_at(b"head", 0).expect("write before any growth");
        b.set_len(1 << 20).expect("grow");
        if platform::overwrites_in_place(&b.file) {
            assert_eq!(
                b.mapped(),
                Some((4, 1 << 20)),
                "the growth is mapped, not before it"
            );
        } else {
            assert_eq!(
                b.mapped(),
                None,
                "no map where a write through it could need space"
            );
        }
        // Inside the map, across its start, at its very end, and too long for it.
        b.write_at(b"inside", 100).expect("inside");
        b.write_at(b"across", 1).expect("across the start");
        b.write_at(b"end!", (1 << 20) - 4).expect("at the end");
        let long = vec![7u8; MAP_WRITE_MAX + 1];
        b.write_at(&long, 4096).expect("long");
        assert_eq!(read(&b, 0, 7), b"hacross");
        assert_eq!(read(&b, 100, 6), b"inside");
        assert_eq!(read(&b, (1 << 20) - 4, 4), b"end!");
        assert_eq!(read(&b, 4096, long.len()), long);
        // Past the end of the file: a pwrite that grows it, never a write past the map.
        b.write_at(b"past", 1 << 20).expect("past the end");
        assert_eq!(read(&b, 1 << 20, 4), b"past");
        b.sync_data().expect("sync");
        assert_eq!(
            std::fs::read(dir.path().join("f")).expect("read file")[100..106],
            *b"inside"
        );
    }

    #[test]
    fn a_shrink_or_a_punched_hole_drops_the_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = backend(dir.path());
        b.set_len(1 << 20).expect("grow");
        b.discard(4096, 8192).expect("discard");
        assert_eq!(
            b.mapped(),
            None,
            "a punched range must not be written through the map"
        );
        b.write_at(b"after", 5000).expect("write into the hole");
        assert_eq!(read(&b, 5000, 5), b"after");
        b.set_len(2 << 20).expect("grow again");
        b.set_len(1 << 16).expect("shrink");
        assert_eq!(
            b.mapped(),
            None,
            "a map past the end of the file would fault"
        );
        b.write_at(b"still", 100).expect("write after the shrink");
        assert_eq!(read(&b, 100, 5), b"still");
        assert_eq!(b.len().expect("len"), 1 << 16);
    }
}
