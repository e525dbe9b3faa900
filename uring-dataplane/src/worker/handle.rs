//! The handles other threads hold on a worker: the control thread's
//! ([`WorkerHandle`]) and the UDP thread's ([`WorkerMailbox`]). A command
//! is queued on the worker's channel and its eventfd written to wake it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc;

use super::WorkerCommand;

/// The control thread's handle on a worker.
#[derive(Debug)]
pub struct WorkerHandle {
    mailbox: WorkerMailbox,
}

/// A handle on a worker that other threads may keep (the UDP flows').
#[derive(Debug, Clone)]
pub struct WorkerMailbox {
    id: usize,
    tx: mpsc::Sender<WorkerCommand>,
    waker: Arc<OwnedFd>,
}

impl WorkerMailbox {
    /// Queues a command and wakes the worker.
    pub fn send(&self, cmd: WorkerCommand) -> Result<(), String> {
        self.tx
            .send(cmd)
            .map_err(|_| format!("worker {} has stopped", self.id))?;
        wake(&self.waker);
        Ok(())
    }
}

impl WorkerHandle {
    pub(super) fn new(id: usize, tx: mpsc::Sender<WorkerCommand>, waker: Arc<OwnedFd>) -> Self {
        WorkerHandle {
            mailbox: WorkerMailbox { id, tx, waker },
        }
    }

    /// A handle for another thread.
    pub fn mailbox(&self) -> WorkerMailbox {
        self.mailbox.clone()
    }

    /// Queues a command and wakes the worker.
    pub fn send(&self, cmd: WorkerCommand) -> Result<(), String> {
        self.mailbox.send(cmd)
    }
}

pub(super) fn wake(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}
