//! Capabilities of the command inside the sandbox's user namespace.
//!
//! The bounding set is what matters: a process running as root gets its whole bounding set
//! again at every `execve`. So the command's bounding set is cut to the allowed list, ambient
//! capabilities are cleared, and the current sets are reduced to the same list.

use super::Power;

// From linux/capability.h.
pub const CHOWN: u32 = 0;
pub const DAC_OVERRIDE: u32 = 1;
pub const FOWNER: u32 = 3;
pub const FSETID: u32 = 4;
pub const KILL: u32 = 5;
pub const SETGID: u32 = 6;
pub const SETUID: u32 = 7;
pub const SETPCAP: u32 = 8;
pub const NET_BIND_SERVICE: u32 = 10;
pub const NET_RAW: u32 = 13;
pub const SYS_CHROOT: u32 = 18;
pub const SYS_ADMIN: u32 = 21;
pub const MKNOD: u32 = 27;
pub const AUDIT_WRITE: u32 = 29;
pub const SETFCAP: u32 = 31;

/// A container runtime's default set (Docker's, the reference most roles are written against).
const STEP: &[u32] = &[
    CHOWN,
    DAC_OVERRIDE,
    FOWNER,
    FSETID,
    KILL,
    SETGID,
    SETUID,
    SETPCAP,
    NET_BIND_SERVICE,
    NET_RAW,
    SYS_CHROOT,
    MKNOD,
    AUDIT_WRITE,
    SETFCAP,
];

pub fn allowed(power: Power) -> Vec<u32> {
    let mut v = STEP.to_vec();
    if power == Power::Mounts {
        v.push(SYS_ADMIN);
    }
    v
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// Keep only `keep` (call in the child right before `execve`; async-signal-safe syscalls only).
pub fn restrict(keep: &[u32]) -> Result<(), &'static str> {
    for cap in 0..64u32 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err("dropping a capability from the bounding set failed");
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let mut data = [Data::default(); 2];
    for &c in keep {
        let (i, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        data[i].effective |= bit;
        data[i].permitted |= bit;
        data[i].inheritable |= bit;
    }
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: capset with a v3 header and two data elements, as the ABI requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, data.as_ptr()) };
    if r != 0 {
        return Err("capset failed");
    }
    Ok(())
}
