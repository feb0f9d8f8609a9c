//! Validated names and the small value types the protocol passes around.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A client's id, assigned by the directory at registration (1, 2, ...).
pub type ClientId = u64;

/// A page's ownership epoch: grows on every ownership change.
pub type Epoch = u64;

/// Longest page name accepted.
pub const MAX_PAGE_NAME: usize = 64;

/// Default largest page content, in bytes (64 KiB).
pub const DEFAULT_MAX_PAGE_BYTES: usize = 64 * 1024;

/// A page name: 1-64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PageName(String);

impl PageName {
    /// Validates `name` as a page name.
    pub fn new(name: &str) -> Result<Self> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if name.is_empty() || name.len() > MAX_PAGE_NAME || !name.chars().all(ok_char) {
            return Err(Error::BadPageName { name: truncate_for_error(name) });
        }
        Ok(PageName(name.to_string()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Keeps error messages short when a caller sends a huge bad name.
fn truncate_for_error(name: &str) -> String {
    const SHOWN: usize = 80;
    if name.chars().count() <= SHOWN {
        return name.to_string();
    }
    let head: String = name.chars().take(SHOWN).collect();
    format!("{head}...")
}

/// Checks page content against the size limit.
pub fn check_size(page: &PageName, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::TooLarge { page: page.to_string(), len, max });
    }
    Ok(())
}

/// A client's access to its local copy of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// No usable copy (an owner that handed the page away may still keep its bytes).
    Invalid,
    /// A read-only copy: reads hit locally.
    Read,
    /// The owner's writable copy: reads and writes hit locally.
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Invalid => "invalid",
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// Which fault a client takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// The client wants a read-only copy.
    Read,
    /// The client wants ownership with write access.
    Write,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Read => "read",
            FaultKind::Write => "write",
        })
    }
}

impl FaultKind {
    /// The access a granted fault of this kind gives.
    pub fn access(self) -> Access {
        match self {
            FaultKind::Read => Access::Read,
            FaultKind::Write => Access::Write,
        }
    }
}

/// Whether an operation was served from the local copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hit {
    /// No RPC was needed.
    Local,
    /// The client took a fault to the CM.
    Fault,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_names() {
        for ok in ["P1", "a", "x.y-z_0", &"a".repeat(64)] {
            assert!(PageName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "é", "p/1", &"a".repeat(65), "P1\n"] {
            let err = PageName::new(bad).unwrap_err();
            assert!(matches!(err, Error::BadPageName { .. }), "{bad}");
        }
    }

    #[test]
    fn size_limit() {
        let p = PageName::new("P1").unwrap();
        assert!(check_size(&p, 10, 10).is_ok());
        let err = check_size(&p, 11, 10).unwrap_err();
        assert_eq!(err.to_string(), "content for page P1 is 11 bytes; the limit is 10 bytes");
    }
}
