//! An io_uring for readiness only.
//!
//! Every submission here is `POLL_ADD` (multishot) or `POLL_REMOVE`: they
//! carry a descriptor number, an event mask and a user-data word, and no
//! pointer to memory of ours. That is what makes pushing them sound: there
//! is no buffer whose lifetime the kernel could outlive.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, types};

/// One completion: the user data, the result (an event mask, or a negative
/// errno), and whether the multishot poll stays armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The token given at submission.
    pub user_data: u64,
    /// `revents` (≥ 0) or `-errno`.
    pub result: i32,
    /// False when the kernel ended the multishot poll (it must be re-armed).
    pub more: bool,
    /// This is the outcome of a [`Ring::poll_remove`] for `user_data`, not a readiness event.
    pub removal: bool,
}

/// The poll mask used for every registration.
pub const POLL_MASK: u32 = (libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLPRI) as u32;

/// A ring used for readiness.
pub struct Ring {
    ring: IoUring,
    ext_arg: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("ext_arg", &self.ext_arg)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Sets up a ring, checking that the kernel offers what the engine
    /// needs: `POLL_ADD`/`POLL_REMOVE` and waiting with a timeout
    /// (`IORING_FEAT_EXT_ARG`, Linux 5.11). `EPERM`/`ENOSYS` here mean
    /// io_uring is disabled or forbidden (sysctl, seccomp).
    pub fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::new(entries)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (op, name) in [
            (opcode::PollAdd::CODE, "POLL_ADD"),
            (opcode::PollRemove::CODE, "POLL_REMOVE"),
        ] {
            if !probe.is_supported(op) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks {name}"),
                ));
            }
        }
        let ext_arg = ring.params().is_feature_ext_arg();
        if !ext_arg {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG (Linux < 5.11)",
            ));
        }
        Ok(Ring { ring, ext_arg })
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the entries pushed by this module are POLL_ADD and
            // POLL_REMOVE, which reference no memory of ours (see the module
            // documentation); nothing must outlive the submission.
            let pushed = unsafe { self.ring.submission().push(entry) };
            match pushed {
                Ok(()) => return Ok(()),
                // Queue full: hand what is queued to the kernel and retry.
                Err(_) => {
                    self.ring.submit()?;
                }
            }
        }
    }

    /// Arms a multishot poll for `fd` under `user_data`. The caller keeps
    /// `fd` open until it removed the poll with [`Ring::poll_remove`].
    pub fn poll_multishot(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(fd), POLL_MASK)
            .multi(true)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Asks the kernel to remove the poll armed under `user_data`.
    ///
    /// Queued submissions go to the kernel first: a removal in the same
    /// batch as its `POLL_ADD` fails with `EALREADY` (measured on 6.18) and
    /// leaves the poll armed, holding the file open after the caller closes
    /// its descriptor. The removal's outcome comes back as a [`Completion`]
    /// with `removal` set; on `EALREADY` the caller must ask again.
    pub fn poll_remove(&mut self, user_data: u64) -> io::Result<()> {
        self.ring.submit()?;
        let e = opcode::PollRemove::new(user_data)
            .build()
            .user_data(user_data | REMOVAL_BIT);
        self.push(&e)?;
        self.ring.submit()?;
        Ok(())
    }

    /// Submits what is queued and waits for at least one completion, at most `timeout`.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let result = match timeout {
            Some(t) if t.is_zero() => self.ring.submit(),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every completion into `out`.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        for c in self.ring.completion() {
            let removal = c.user_data() & REMOVAL_BIT != 0;
            out.push(Completion {
                user_data: c.user_data() & !REMOVAL_BIT,
                result: c.result(),
                more: cqueue::more(c.flags()),
                removal,
            });
        }
    }
}

/// Marks the user data of `POLL_REMOVE` submissions. Tokens given to
/// [`Ring::poll_multishot`] must leave this bit clear (worker tokens keep a
/// kind below 8 in their top four bits).
pub const REMOVAL_BIT: u64 = 1 << 63;

/// Event bits of a completion's result.
pub fn readiness(result: i32) -> (bool, bool) {
    if result < 0 {
        // An error on the poll itself: let the owner try I/O and find out.
        return (true, true);
    }
    let r = result as i16;
    let broken = r & (libc::POLLERR | libc::POLLHUP) != 0;
    (
        broken || r & (libc::POLLIN | libc::POLLRDHUP | libc::POLLPRI) != 0,
        broken || r & libc::POLLOUT != 0,
    )
}
