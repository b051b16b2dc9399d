//! A real full disk for the tests: a small tmpfs mounted on a temporary
//! directory, filled to the last byte on demand. Mounting needs root (or
//! CAP_SYS_ADMIN): where it is refused, [`SmallDisk::mount`] says so and
//! returns `None`, and the test skips with that message.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::server::temp_dir;

/// A tmpfs of a few megabytes, unmounted when dropped.
pub struct SmallDisk {
    root: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `megabytes` on a fresh temporary directory;
    /// `None` (after saying why on stderr) where mounting is not allowed.
    pub fn mount(megabytes: u32) -> Option<SmallDisk> {
        let root = temp_dir("small-disk");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&root)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { root }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs to fill (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Takes every free byte with one file (`filler`), as a disk that ran
    /// full; returns how many bytes it took.
    pub fn fill(&self) -> u64 {
        let mut file = std::fs::File::create(self.root.join("filler")).expect("create filler");
        let mut taken = 0u64;
        for block in [1 << 20, 4096, 1] {
            let bytes = vec![0xA5u8; block];
            while file.write_all(&bytes).is_ok() {
                taken += block as u64;
            }
        }
        taken
    }

    /// Gives the space [`fill`](Self::fill) took back.
    pub fn free(&self) {
        std::fs::remove_file(self.root.join("filler")).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a server still being torn down may hold files open.
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        let _ = std::fs::remove_dir(&self.root);
    }
}
