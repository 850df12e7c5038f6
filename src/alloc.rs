//! The process allocator: the system allocator, except that allocations of 1 GiB and more are
//! anonymous mappings with `MAP_NORESERVE`.
//!
//! Why: protocol decoders (kafka-protocol 0.18's array decoders, see
//! kafka-protocol-rs/kafka-protocol-rs#200) size a `Vec` from an element count read off the
//! wire before checking it against the bytes present. A 20-byte request can ask for 100 GiB;
//! the system allocator refuses and Rust aborts the whole process. A no-reserve mapping of that
//! size only takes address space: the decoder touches a few pages, fails on the short buffer,
//! and the mapping is returned. Memory actually used still tracks the bytes received (requests
//! are bounded by `socket.request.max.bytes`). Under strict overcommit (`vm.overcommit_memory
//! = 2`) the kernel refuses such mappings and the behaviour is the default one.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size up are no-reserve mappings.
const HUGE: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct Allocator;

fn huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer handed out is either the system allocator's (and goes back to it) or a
// page-aligned mapping of at least the requested size (and goes back to munmap); `huge` decides
// which from the layout, which callers must pass unchanged to dealloc and realloc.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if huge(&layout) {
            // SAFETY: a huge layout has a non-zero size.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if huge(&layout) {
            // anonymous mappings are zero-filled
            // SAFETY: a huge layout has a non-zero size.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: the caller's layout, as GlobalAlloc::alloc_zeroed requires.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if huge(&layout) {
            // SAFETY: a huge layout's pointer is a mapping of its size made by `map`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: a small layout's pointer came from the system allocator with it.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        match (huge(&layout), huge(&new_layout)) {
            // SAFETY: both small: the system allocator's block, with its layout.
            (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
            (true, true) => {
                // SAFETY: ptr is a mapping of layout.size() bytes from `map`.
                let p = unsafe {
                    libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if p == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // SAFETY: new_layout has a non-zero size (realloc's contract).
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    // SAFETY: both blocks are valid for the smaller of the two sizes and
                    // distinct allocations.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_allocations_round_trip() {
        let a = Allocator;
        // SAFETY: each pointer is written within its layout's size and freed with it.
        unsafe {
            // far more than this machine could reserve: only address space is taken
            let l = Layout::from_size_align(64 << 30, 8).unwrap();
            let p = a.alloc(l);
            assert!(!p.is_null());
            *p = 7;
            *p.add((64 << 30) - 1) = 9;
            let p2 = a.realloc(p, l, 65 << 30);
            assert!(!p2.is_null());
            assert_eq!(*p2, 7);
            let l2 = Layout::from_size_align(65 << 30, 8).unwrap();
            let small = a.realloc(p2, l2, 16);
            assert_eq!(*small, 7);
            a.dealloc(small, Layout::from_size_align(16, 8).unwrap());
            let z = a.alloc_zeroed(l);
            assert_eq!(*z.add(12345), 0);
            a.dealloc(z, l);
        }
    }
}
