//! A disk that loses power: redb's [`StorageBackend`] over two images, what was **written**
//! and what was **synced**. Writes and length changes go to the written image and a log;
//! `sync_data` applies the log to the synced image. Three things can happen to the machine:
//!
//! - **Crash** (the process dies, the operating system lives on): written data stays, synced
//!   or not, as in a page cache.
//! - **Power loss**: every write not yet synced is lost; the disk holds the synced image.
//! - **Power loss during a commit** ([`Disk::cut_at_next_sync`]): the next sync fails and
//!   power is lost at that moment, so nothing of the commit in progress is durable.
//!
//! Each opening of a database gets its own [`DiskBackend`]; after a crash or a power loss the
//! backends of the dead process fail every operation, so nothing it still does (its writer
//! thread finishing, its `Drop`) reaches the disk.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// A change written and not yet synced.
#[derive(Debug, Clone)]
enum Change {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

#[derive(Debug, Default)]
struct Images {
    written: Vec<u8>,
    synced: Vec<u8>,
    /// Changes in the written image that the synced one lacks, in order.
    unsynced: Vec<Change>,
    /// Bumped by every crash and power loss: a backend of an older generation is dead.
    generation: u64,
    /// The next sync is where the power goes.
    cut_at_next_sync: bool,
    /// Syncs done, for tests.
    syncs: u64,
}

/// A simulated disk, shared by the simulation (which cuts the power) and the database on it.
#[derive(Debug, Clone, Default)]
pub struct Disk(Arc<Mutex<Images>>);

impl Disk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn images(&self) -> MutexGuard<'_, Images> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A backend for a new opening of the database on this disk.
    pub fn backend(&self) -> DiskBackend {
        DiskBackend {
            disk: self.clone(),
            generation: self.images().generation,
        }
    }

    /// The process using the disk died: its backends stop working; what it wrote stays.
    pub fn crash(&self) {
        self.images().generation += 1;
    }

    /// The machine lost power: its backends stop working and every write not synced is lost.
    pub fn power_loss(&self) {
        power_loss(&mut self.images());
    }

    /// The power goes at the next sync: that sync fails and nothing it would have made durable
    /// is kept.
    pub fn cut_at_next_sync(&self) {
        self.images().cut_at_next_sync = true;
    }

    /// Whether the next sync will cut the power (it has not happened yet).
    pub fn cut_pending(&self) -> bool {
        self.images().cut_at_next_sync
    }

    /// Disarms [`Disk::cut_at_next_sync`] if it did not strike.
    pub fn disarm(&self) {
        self.images().cut_at_next_sync = false;
    }

    /// Bytes written and not yet synced (what a power loss would take).
    pub fn unsynced_bytes(&self) -> usize {
        self.images()
            .unsynced
            .iter()
            .map(|change| match change {
                Change::Write { data, .. } => data.len(),
                Change::SetLen(_) => 0,
            })
            .sum()
    }

    /// How many syncs were done.
    pub fn syncs(&self) -> u64 {
        self.images().syncs
    }
}

/// Sets the length of an image; new bytes are zero. (`Vec::resize` fills byte by byte, which
/// is slow in a debug build; a zeroed allocation is not.)
fn set_len(image: &mut Vec<u8>, len: usize) {
    if len <= image.len() {
        image.truncate(len);
    } else {
        image.extend_from_slice(&vec![0; len - image.len()]);
    }
}

fn power_loss(images: &mut Images) {
    images.generation += 1;
    images.written = images.synced.clone();
    images.unsynced.clear();
    images.cut_at_next_sync = false;
}

/// One opening's access to a [`Disk`]; dead once the disk crashed or lost power after it was
/// made.
pub struct DiskBackend {
    disk: Disk,
    generation: u64,
}

impl fmt::Debug for DiskBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskBackend")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn gone() -> io::Error {
    io::Error::other("the simulated disk lost power, or its process died")
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "beyond the end of the disk")
}

impl DiskBackend {
    /// The images, if this backend's process is still alive.
    fn live(&self) -> io::Result<MutexGuard<'_, Images>> {
        let images = self.disk.images();
        if images.generation == self.generation {
            Ok(images)
        } else {
            Err(gone())
        }
    }
}

impl StorageBackend for DiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.live()?.written.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let images = self.live()?;
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let bytes = start
            .checked_add(out.len())
            .and_then(|end| images.written.get(start..end))
            .ok_or_else(out_of_range)?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut images = self.live()?;
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        set_len(&mut images.written, len);
        images.unsynced.push(Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut images = self.live()?;
        if images.cut_at_next_sync {
            power_loss(&mut images);
            return Err(gone());
        }
        let Images {
            synced, unsynced, ..
        } = &mut *images;
        for change in unsynced.drain(..) {
            match change {
                Change::SetLen(len) => set_len(synced, len),
                Change::Write { offset, data } => {
                    let end = offset + data.len();
                    if synced.len() < end {
                        set_len(synced, end);
                    }
                    if let Some(target) = synced.get_mut(offset..end) {
                        target.copy_from_slice(&data);
                    }
                }
            }
        }
        images.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut images = self.live()?;
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(data.len()).ok_or_else(out_of_range)?;
        images
            .written
            .get_mut(start..end)
            .ok_or_else(out_of_range)?
            .copy_from_slice(data);
        images.unsynced.push(Change::Write {
            offset: start,
            data: data.to_vec(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(backend: &DiskBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        backend.read(offset, &mut out).unwrap();
        out
    }

    #[test]
    fn power_loss_keeps_only_what_was_synced() {
        let disk = Disk::new();
        let backend = disk.backend();
        backend.set_len(8).unwrap();
        backend.write(0, b"abcd").unwrap();
        backend.sync_data().unwrap();
        backend.write(4, b"efgh").unwrap();
        assert_eq!(disk.unsynced_bytes(), 4);
        disk.power_loss();
        assert!(
            backend.read(0, &mut [0; 4]).is_err(),
            "the old process is gone"
        );
        let after = disk.backend();
        assert_eq!(read(&after, 0, 8), b"abcd\0\0\0\0");
    }

    #[test]
    fn a_crash_keeps_what_was_written() {
        let disk = Disk::new();
        let backend = disk.backend();
        backend.set_len(4).unwrap();
        backend.write(0, b"wxyz").unwrap();
        disk.crash();
        assert!(backend.write(0, b"0000").is_err());
        assert_eq!(read(&disk.backend(), 0, 4), b"wxyz");
    }

    #[test]
    fn a_cut_sync_fails_and_loses_the_commit() {
        let disk = Disk::new();
        let backend = disk.backend();
        backend.set_len(4).unwrap();
        backend.sync_data().unwrap();
        backend.write(0, b"gone").unwrap();
        disk.cut_at_next_sync();
        assert!(backend.sync_data().is_err());
        assert!(!disk.cut_pending());
        assert_eq!(read(&disk.backend(), 0, 4), b"\0\0\0\0");
    }
}
