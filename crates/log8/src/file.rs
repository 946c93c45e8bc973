//! A log file rotated by size, created with the Go original's permissions: files 0640
//! (readable by a log shipper in the group), directories 0750.
//!
//! `path` is written until the next line would make it larger than the limit; it is then
//! renamed `path.1` (the previous `path.1` becomes `path.2`, ...) and at most
//! `max_backups` old files are kept. Permissions are set explicitly, so the umask does
//! not change them.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of log files.
pub const FILE_MODE: u32 = 0o640;
/// Mode of the directories created for log files.
pub const DIR_MODE: u32 = 0o750;

pub(crate) struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_backups: u32,
    rotate_failed: bool,
}

impl RotatingFile {
    /// Opens (appending) or creates `path`, creating its missing directories.
    pub(crate) fn open(path: &Path, max_bytes: u64, max_backups: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            create_dirs(dir)?;
        }
        let file = open_file(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            file,
            size,
            max_bytes: max_bytes.max(1),
            max_backups,
            rotate_failed: false,
        })
    }

    fn backup(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.max_backups == 0 {
            fs::remove_file(&self.path)?;
        } else {
            // The oldest goes; the others move up by one.
            match fs::remove_file(self.backup(self.max_backups)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for n in (1..self.max_backups).rev() {
                match fs::rename(self.backup(n), self.backup(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, self.backup(1))?;
        }
        self.file = open_file(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let full = self.size > 0 && self.size + buf.len() as u64 > self.max_bytes;
        if full
            && !self.rotate_failed
            && let Err(e) = self.rotate()
        {
            // Keep logging to the current file rather than losing lines; say so once.
            self.rotate_failed = true;
            eprintln!(
                "log8: cannot rotate {}: {e}; writing on without rotation",
                self.path.display()
            );
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    // The umask may have removed bits, and an existing file may have others: set them
    // as the Go original does (ignored when the file belongs to someone else).
    let _ = file.set_permissions(Permissions::from_mode(FILE_MODE));
    Ok(file)
}

/// Creates `dir` and its missing parents with [`DIR_MODE`]; existing ones are untouched.
pub(crate) fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_with_go_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/app.log");
        let mut f = RotatingFile::open(&path, 1000, 2).unwrap();
        f.write_all(b"line\n").unwrap();
        assert_eq!(mode(&path), 0o640);
        assert_eq!(mode(&tmp.path().join("a")), 0o750);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o750);
    }

    #[test]
    fn existing_files_are_set_to_0640_and_appended() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("app.log");
        fs::write(&path, "old\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        let mut f = RotatingFile::open(&path, 1000, 2).unwrap();
        f.write_all(b"new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\nnew\n");
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn rotates_by_size_keeping_max_backups() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("app.log");
        let mut f = RotatingFile::open(&path, 30, 2).unwrap();
        for i in 0..8 {
            f.write_all(format!("line number {i}\n").as_bytes())
                .unwrap(); // 14 bytes
        }
        f.flush().unwrap();
        let read = |name: &str| fs::read_to_string(tmp.path().join(name)).unwrap();
        // Two lines fit in 30 bytes; the third starts a new file.
        assert_eq!(read("app.log"), "line number 6\nline number 7\n");
        assert_eq!(read("app.log.1"), "line number 4\nline number 5\n");
        assert_eq!(read("app.log.2"), "line number 2\nline number 3\n");
        assert!(!tmp.path().join("app.log.3").exists());
        assert_eq!(mode(&tmp.path().join("app.log")), 0o640);
    }
}
