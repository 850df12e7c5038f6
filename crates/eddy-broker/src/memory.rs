//! What the process really holds, for the memory alarm: the allocator's own count of the bytes
//! in use (glibc's `mallinfo2`: arena bytes handed out plus chunks mapped on their own), or the
//! resident set where that count does not exist. The broker's estimate of message bytes alone
//! saw a fifth of it (a 100-byte message costs ~600 bytes of the process's memory).

/// Bytes in use by the process's allocations, if the platform says.
pub fn allocated() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        resident()
    }
}

/// The resident set size (`/proc/self/statm`), if readable.
pub fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf with a valid name has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_large_allocation_is_seen() {
        let before = super::allocated().unwrap();
        let v = vec![1u8; 64 << 20];
        let during = super::allocated().unwrap();
        assert!(during >= before + (60 << 20), "{before} → {during}");
        drop(v);
        assert!(super::resident().unwrap() > 0);
    }
}
