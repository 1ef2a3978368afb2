//! Reading a file the user names (a key, a statement, a document beside a run): bounded before
//! it allocates, and refused unopened when it is not a regular file.

use std::io::Read;

use crate::error::{Error, Result};

/// Read the file at `path` (a path the user gave: links are followed), which must be a regular
/// file of at most `max` bytes; both are checked before it is opened, so that a FIFO or a
/// device never blocks the reader and no size is read beyond the bound.
pub fn read_file(path: &std::path::Path, max: u64) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| Error::from_io(&name, source))?;
    let (store, key) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(file)) => (
            dir.display().to_string(),
            file.to_string_lossy().into_owned(),
        ),
        _ => (name.clone(), String::new()),
    };
    if !meta.is_file() {
        return Err(Error::NotRegularFile {
            store,
            key,
            what: describe(meta.file_type()).to_string(),
        });
    }
    if meta.len() > max {
        return Err(Error::ObjectTooLarge {
            store,
            key,
            size: meta.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(max.saturating_add(1)).read_to_end(&mut out))
        .map_err(|source| Error::from_io(&name, source))?;
    if out.len() as u64 > max {
        return Err(Error::ObjectTooLarge {
            store,
            key,
            size: out.len() as u64,
            max,
        });
    }
    Ok(out)
}

/// What a file-system entry that is not a regular file is, in words.
pub fn describe(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}
