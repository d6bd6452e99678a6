//! What differs between operating systems, in one place.
//!
//! Linux is the platform the test suite runs on. Elsewhere each call falls back to the portable
//! behaviour written beside it. Those fallbacks are the same paths Linux takes on a file system
//! without `fallocate` (tmpfs before 3.5, some network file systems), so the tests cover their
//! logic, if not the platform. CI type-checks macOS and Windows.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Fills `buf` from `offset` of `file`; an error if the file ends first.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        // `seek_read` moves the file cursor, which nothing here relies on.
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
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
}

/// Most buffers one `pwritev` takes (`IOV_MAX` on Linux).
#[cfg(target_os = "linux")]
const IOV_MAX: usize = 1024;

/// Writes `parts` one after another from `offset` of `file`, in as few `pwritev` calls as
/// `IOV_MAX` allows, so the kernel sees one long write.
#[cfg(target_os = "linux")]
pub(crate) fn write_vectored_all_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    io::IoSlice::advance_slices(&mut rest, 0);
    let mut at = offset;
    while !rest.is_empty() {
        let n = rest.len().min(IOV_MAX);
        match rustix::io::pwritev(file, &rest[..n], at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                at += written as u64;
                io::IoSlice::advance_slices(&mut rest, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes all of `data` at `offset` of `file`.
pub(crate) fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, data, offset)
    }
    #[cfg(windows)]
    {
        let (mut data, mut offset) = (data, offset);
        while !data.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(file, data, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Allocates the blocks of `len` bytes at `offset` (growing the file if they lie past its end).
/// `Ok(false)` where that cannot be done: then growth is sparse, and a full disk shows up when
/// a block is first written rather than here.
pub(crate) fn allocate(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::FallocateFlags;
        match rustix::fs::fallocate(file, FallocateFlags::empty(), offset, len) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (file, offset, len);
        Ok(false)
    }
}

/// Whether `file`'s file system overwrites allocated blocks in place (ext4, XFS, tmpfs), so that
/// writing into space allocated with [`allocate`] can never need more: then a write through a
/// map of it cannot fault on a full disk. Copy-on-write file systems (btrfs, ZFS) allocate anew
/// on every overwrite, where a full disk through a map is a `SIGBUS`. `false` when unknown, and
/// off Linux.
pub(crate) fn overwrites_in_place(file: &File) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        const EXT4: u64 = 0xEF53;
        const XFS: u64 = 0x5846_5342;
        const TMPFS: u64 = 0x0102_1994;
        rustix::fs::fstatfs(file).is_ok_and(|s| {
            // `f_type` is signed on some targets; the magic numbers are all positive.
            #[allow(clippy::unnecessary_cast, clippy::cast_sign_loss)]
            let kind = s.f_type as u64;
            matches!(kind, EXT4 | XFS | TMPFS)
        })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = file;
        false
    }
}

/// Starts writing back `len` bytes at `offset` of `file` to the disk without waiting
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later `fdatasync` finds less to do.
/// Durability is unchanged: only `fdatasync` promises anything. A no-op elsewhere.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: `sync_file_range` takes a file descriptor (valid: `file` is borrowed for the
        // call) and integers; it touches no memory of this process.
        let r =
            unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, offset, len);
        Ok(())
    }
}

/// Frees the blocks of `len` bytes at `offset` without changing the file's length, so they read
/// as zeros. `Ok(false)` where holes cannot be punched: the caller then writes zeros.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::FallocateFlags;
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(file, flags, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (file, offset, len);
        Ok(false)
    }
}

/// Copies `len` bytes of `src` at `src_offset` to `dst` at `dst_offset` inside the kernel
/// (`copy_file_range`). `Ok(false)` where that cannot be done (another file system, an old kernel,
/// another platform): nothing was copied, and the caller writes the bytes itself.
pub(crate) fn copy_range(
    src: &File,
    src_offset: u64,
    dst: &File,
    dst_offset: u64,
    len: u64,
) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::io::Errno;
        let (mut from, mut to) = (src_offset, dst_offset);
        let end = src_offset.saturating_add(len);
        while from < end {
            let want = usize::try_from(end - from)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), want) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "copy_file_range: the source ended before the range did",
                    ));
                }
                Ok(_) | Err(Errno::INTR) => {}
                Err(e)
                    if from == src_offset
                        && (unsupported(e)
                            || [Errno::XDEV, Errno::INVAL, Errno::BADF].contains(&e)) =>
                {
                    // Nothing copied yet: the caller's write_at does the whole range.
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (src, src_offset, dst, dst_offset, len);
        Ok(false)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn unsupported(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS
}

/// Bytes an unprivileged writer may still allocate on the file system holding `dir`; `None`
/// where this platform cannot say (compaction then skips its free-space check).
pub(crate) fn available_space(dir: &Path) -> io::Result<Option<u64>> {
    #[cfg(unix)]
    {
        let s = rustix::fs::statvfs(dir)?;
        Ok(Some(s.f_bavail.saturating_mul(s.f_frsize)))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(None)
    }
}

/// Makes the entries of `dir` (files created or renamed in it) durable. Windows cannot open a
/// directory as a file, and NTFS journals its metadata, so there this does nothing.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Opens with `options`, without blocking on a FIFO or device that has no peer: the caller
/// checks the file type on the handle, then calls [`restore_blocking`].
pub(crate) fn open_nonblocking(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

/// Clears the non-blocking flag [`open_nonblocking`] set: it means nothing for a regular file,
/// but the handle should be exactly what the rest of the engine expects.
pub(crate) fn restore_blocking(file: &File) -> io::Result<()> {
    #[cfg(unix)]
    {
        Ok(rustix::fs::fcntl_setfl(file, rustix::fs::OFlags::empty())?)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(())
    }
}

/// Whether an open failed because `path` is a device without a driver (`ENXIO`).
pub(crate) fn is_device_without_driver(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error())
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Asks the CPU to start loading the first two cache lines of `items` (one if they fit in one).
#[inline]
pub(crate) fn prefetch<T>(items: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = items.as_ptr().cast::<i8>();
        // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program, so
        // any address is sound; this one lies in (or one past) a live slice.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
        if std::mem::size_of_val(items) > 64 {
            // SAFETY: as above; `p + 64` lies inside the slice.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = items;
}
