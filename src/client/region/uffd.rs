//! The few userfaultfd calls a region needs, as raw ioctls through libc (the
//! kernel's `include/uapi/linux/userfaultfd.h`): open, register a range for
//! MISSING and WP faults, read fault messages, resolve them (copy a page in,
//! write-protected or not; remove write protection; wake), and zap a page.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::Error;

/// Bytes in one region page (one x86-64 / arm64 base page).
pub const PAGE: usize = 4096;

const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
const REGISTER_MODE_MISSING: u64 = 1 << 0;
const REGISTER_MODE_WP: u64 = 1 << 1;
const COPY_MODE_WP: u64 = 1 << 1;
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `_IOWR(0xAA, nr, size)` and `_IOR(0xAA, nr, size)`.
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (UFFD_API << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (UFFD_API << 8) | nr
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}
/// `struct uffd_msg` with its pagefault member (32 bytes).
#[repr(C)]
#[derive(Default)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    ptid: u64,
}

const UFFDIO_API: u64 = iowr(0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ior(0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ior(0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = iowr(0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, std::mem::size_of::<UffdioWriteprotect>());

/// What a fault message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMsg {
    /// An access to a page not present (`write`: the access was a store).
    Missing { addr: usize, write: bool },
    /// A store to a write-protected page.
    WriteProtected { addr: usize },
}

/// An open userfaultfd with the API handshake done (WP supported).
pub struct Uffd {
    fd: OwnedFd,
}

impl Uffd {
    /// Opens a userfaultfd, or says what to enable.
    pub fn open() -> Result<Uffd, Error> {
        // SAFETY: the userfaultfd syscall takes one flags argument and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if raw < 0 {
            return Err(unavailable(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd this process owns and nothing else closes.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let uffd = Uffd { fd };
        let mut api = UffdioApi { api: UFFD_API, features: UFFD_FEATURE_PAGEFAULT_FLAG_WP, ioctls: 0 };
        uffd.ioctl(UFFDIO_API, &mut api).map_err(|e| {
            Error::SvmUnavailable(format!(
                "the kernel refused userfaultfd write-protect mode ({e}); anonymous-memory WP needs Linux 5.7 or later"
            ))
        })?;
        Ok(uffd)
    }

    fn ioctl<T>(&self, request: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: each request code above is paired by its callers with the
        // `#[repr(C)]` struct of the size encoded in it; the kernel reads and
        // writes only that struct.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, arg as *mut T) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Registers `[start, start+len)` for MISSING and WP faults.
    pub fn register(&self, start: usize, len: usize) -> Result<(), Error> {
        let range = UffdioRange { start: start as u64, len: len as u64 };
        let mut reg = UffdioRegister { range, mode: REGISTER_MODE_MISSING | REGISTER_MODE_WP, ioctls: 0 };
        self.ioctl(UFFDIO_REGISTER, &mut reg).map_err(|e| {
            Error::SvmUnavailable(format!("cannot register the region with userfaultfd in MISSING and WP modes: {e}"))
        })
    }

    /// Unregisters the range (before it is unmapped).
    pub fn unregister(&self, start: usize, len: usize) {
        let mut range = UffdioRange { start: start as u64, len: len as u64 };
        let _ = self.ioctl(UFFDIO_UNREGISTER, &mut range);
    }

    /// Installs `src` (one page) at `dst`, write-protected when `wp`, waking
    /// the faulting threads. `Ok(false)`: the page was already present.
    pub fn copy(&self, dst: usize, src: &[u8; PAGE], wp: bool) -> io::Result<bool> {
        let mode = if wp { COPY_MODE_WP } else { 0 };
        let mut copy = UffdioCopy { dst: dst as u64, src: src.as_ptr() as u64, len: PAGE as u64, mode, copy: 0 };
        match self.ioctl(UFFDIO_COPY, &mut copy) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.wake(dst);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets or removes write protection of one page (removing it wakes the faulting threads).
    pub fn write_protect(&self, addr: usize, wp: bool) -> io::Result<()> {
        let range = UffdioRange { start: addr as u64, len: PAGE as u64 };
        let mut arg = UffdioWriteprotect { range, mode: if wp { WRITEPROTECT_MODE_WP } else { 0 } };
        self.ioctl(UFFDIO_WRITEPROTECT, &mut arg)
    }

    /// Wakes the threads waiting on a fault of the page at `addr` (they retry the access).
    pub fn wake(&self, addr: usize) {
        let mut range = UffdioRange { start: addr as u64, len: PAGE as u64 };
        let _ = self.ioctl(UFFDIO_WAKE, &mut range);
    }

    /// Waits up to `timeout_ms` for one fault message; `None` when none came.
    pub fn next(&self, timeout_ms: i32) -> io::Result<Option<FaultMsg>> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n <= 0 {
            return if n < 0 { Err(io::Error::last_os_error()) } else { Ok(None) };
        }
        let mut msg = UffdMsg::default();
        let size = std::mem::size_of::<UffdMsg>();
        // SAFETY: `msg` is a writable `#[repr(C)]` buffer of exactly `size` bytes.
        let got = unsafe { libc::read(self.fd.as_raw_fd(), (&mut msg as *mut UffdMsg).cast(), size) };
        if got != size as isize || msg.event != UFFD_EVENT_PAGEFAULT {
            return Ok(None);
        }
        let addr = msg.address as usize & !(PAGE - 1);
        Ok(Some(if msg.flags & UFFD_PAGEFAULT_FLAG_WP != 0 {
            FaultMsg::WriteProtected { addr }
        } else {
            FaultMsg::Missing { addr, write: msg.flags & UFFD_PAGEFAULT_FLAG_WRITE != 0 }
        }))
    }
}

/// Drops the page at `addr` (MADV_DONTNEED): the next access is a missing fault.
pub fn zap(addr: usize) -> io::Result<()> {
    // SAFETY: `addr` is a page of a private anonymous mapping this region owns;
    // dropping it only makes the next access fault.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, PAGE, libc::MADV_DONTNEED) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reserves `len` bytes of private anonymous memory.
pub fn map_anonymous(len: usize) -> Result<usize, Error> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(Error::Internal(format!("mmap of {len} bytes: {}", io::Error::last_os_error())));
    }
    Ok(p as usize)
}

/// Releases a mapping made by [`map_anonymous`].
pub fn unmap(addr: usize, len: usize) {
    // SAFETY: `addr`/`len` is exactly a mapping from `map_anonymous` that no
    // reference outlives (the region hands out borrows of itself only).
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

/// The error `Region::map` returns when userfaultfd cannot be opened.
fn unavailable(e: io::Error) -> Error {
    let what = match e.raw_os_error() {
        Some(libc::EPERM) => "permission denied: run as root, give the process CAP_SYS_PTRACE, or set sysctl vm.unprivileged_userfaultfd=1",
        Some(libc::ENOSYS) => "this kernel has no userfaultfd: build it with CONFIG_USERFAULTFD=y (Linux 5.7 or later for write-protect mode)",
        _ => "userfaultfd(2) failed",
    };
    Error::SvmUnavailable(format!("{what} ({e})"))
}
