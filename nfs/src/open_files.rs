//! Files the gateway holds open in the volume on behalf of NFS clients.
//!
//! NFSv3 has no OPEN or CLOSE, but the volume buffers writes per open file
//! and expects `open` before `write`. The gateway opens a file at its first
//! WRITE, keeps it open while WRITEs keep coming, and releases it once it
//! has been idle for [`OPEN_IDLE_TIMEOUT`] or when more than
//! [`OPEN_FILES_MAX`] are open. Every WRITE is made durable before its
//! reply, so a release never has data of its own to flush.
//!
//! While a file is open here, reads of it see this gateway's view of the
//! file (close-to-open consistency of the volume): writes made by another
//! client become visible after the gateway releases the file, that is within
//! the idle timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use sohofs_storage::volume::{Ino, Volume};
use sohofs_storage::FsError;

/// Files held open at once; past this, the least recently used idle ones
/// are released.
pub const OPEN_FILES_MAX: usize = 256;
/// A file with no WRITE for this long is released.
pub const OPEN_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often idle files are looked for.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

struct Entry {
    /// Requests using the file right now; it is never released while any is.
    users: u32,
    last_used: Instant,
}

pub struct OpenFiles {
    volume: Volume,
    table: StdMutex<HashMap<Ino, Entry>>,
    /// Serialises first opens, so that two WRITEs to a file that is not yet
    /// open do not both open it.
    opening: tokio::sync::Mutex<()>,
}

/// One request's use of an open file; dropping it marks the file idle.
pub struct OpenGuard {
    files: Arc<OpenFiles>,
    ino: Ino,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut table = self.files.table();
        if let Some(entry) = table.get_mut(&self.ino) {
            entry.users -= 1;
            entry.last_used = Instant::now();
        }
    }
}

impl OpenFiles {
    /// Makes the table and starts the task that releases idle files; the
    /// task ends when the table is dropped.
    pub fn start(volume: Volume) -> Arc<OpenFiles> {
        let files = Arc::new(OpenFiles {
            volume,
            table: StdMutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        });
        let weak: Weak<OpenFiles> = Arc::downgrade(&files);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                let Some(files) = weak.upgrade() else { break };
                let idle = files.take_idle(|entry| entry.last_used.elapsed() >= OPEN_IDLE_TIMEOUT, usize::MAX);
                files.release_all(idle).await;
            }
        });
        files
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Ino, Entry>> {
        self.table.lock().expect("open files table lock")
    }

    fn try_use(self: &Arc<Self>, ino: Ino) -> Option<OpenGuard> {
        let mut table = self.table();
        let entry = table.get_mut(&ino)?;
        entry.users += 1;
        entry.last_used = Instant::now();
        Some(OpenGuard {
            files: self.clone(),
            ino,
        })
    }

    /// The file `ino`, open in the volume until the guard is dropped.
    pub async fn acquire(self: &Arc<Self>, ino: Ino) -> Result<OpenGuard, FsError> {
        if let Some(guard) = self.try_use(ino) {
            return Ok(guard);
        }
        let opening = self.opening.lock().await;
        if let Some(guard) = self.try_use(ino) {
            return Ok(guard);
        }
        self.volume.open(ino).await?;
        let excess = {
            let mut table = self.table();
            table.insert(
                ino,
                Entry {
                    users: 1,
                    last_used: Instant::now(),
                },
            );
            table.len().saturating_sub(OPEN_FILES_MAX)
        };
        drop(opening);
        if excess > 0 {
            let oldest = self.take_idle(|_| true, excess);
            let files = self.clone();
            tokio::spawn(async move { files.release_all(oldest).await });
        }
        Ok(OpenGuard {
            files: self.clone(),
            ino,
        })
    }

    /// Releases `ino` now if no request is using it (it was removed).
    pub async fn forget(&self, ino: Ino) {
        let idle = {
            let mut table = self.table();
            match table.get(&ino) {
                Some(entry) if entry.users == 0 => table.remove(&ino).map(|_| ino),
                _ => None,
            }
        };
        self.release_all(idle.into_iter().collect()).await;
    }

    /// Releases every file no request is using (at shutdown).
    pub async fn close_all(&self) {
        let idle = self.take_idle(|_| true, usize::MAX);
        self.release_all(idle).await;
    }

    /// Takes out of the table up to `limit` unused files that `pick`
    /// chooses, least recently used first.
    fn take_idle(&self, pick: impl Fn(&Entry) -> bool, limit: usize) -> Vec<Ino> {
        let mut table = self.table();
        let mut idle: Vec<(Instant, Ino)> = table
            .iter()
            .filter(|(_, entry)| entry.users == 0 && pick(entry))
            .map(|(ino, entry)| (entry.last_used, *ino))
            .collect();
        idle.sort_unstable();
        idle.truncate(limit);
        for (_, ino) in &idle {
            table.remove(ino);
        }
        idle.into_iter().map(|(_, ino)| ino).collect()
    }

    async fn release_all(&self, inos: Vec<Ino>) {
        for ino in inos {
            if let Err(error) = self.volume.release(ino).await {
                tracing::warn!(ino, %error, "releasing a file the NFS gateway had open failed");
            }
        }
    }

    /// How many files are open (for tests and logs).
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
