//! One malloc arena per process.
//!
//! glibc's malloc gives a thread that allocates while another holds the main
//! arena an arena of its own, and keeps what is freed there resident for the
//! next allocation. Our processes allocate a round's buffers on the runtime's
//! thread and train on blocking threads, so each such thread came to hold a
//! round's worth of freed buffers. Measured with `bench/federation.sh --rounds 5`
//! on a 2-core AMD EPYC (Zen 3, AVX2): five CNN clients and the server peaked at
//! 163-164 MB together, a client at 29-31 MB; with one arena
//! (`MALLOC_ARENA_MAX=1`) 149-152 MB and 26-27 MB, in the same wall time. They
//! allocate little and from few threads, so sharing one arena costs nothing we
//! could measure. It is one libc call (`mallopt`); no crate wraps it.

/// Keeps this process's allocations in one malloc arena (glibc only; elsewhere
/// nothing happens). Call it first in `main`, before other threads start.
/// Returns whether the allocator took the setting.
pub fn single_arena() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        set_arena_max()
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max() -> bool {
    // SAFETY: mallopt only changes a tuning parameter of glibc's allocator; it
    // takes no pointers and is safe to call at any time.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_single_arena() {
        let took = super::single_arena();
        assert_eq!(took, cfg!(all(target_os = "linux", target_env = "gnu")));
        // Allocating from another thread afterwards still works.
        let v = std::thread::spawn(|| vec![1u8; 1 << 20]).join().unwrap();
        assert_eq!(v.len(), 1 << 20);
    }
}
