//! The seccomp filter of a sandboxed command: a deny list in the spirit of container runtimes.
//!
//! Most of what it denies is already refused by the user namespace (none of these calls is
//! allowed without a capability of the host's namespace); the filter keeps a kernel bug in one
//! of them from becoming an escape, and keeps global kernel state (keyrings, clocks) out of
//! reach. Denied calls fail with EPERM; `clone3` fails with ENOSYS so that libc falls back to
//! `clone`, whose namespace flags the filter can see. Syscalls of another ABI (i386, x32) fail
//! with ENOSYS: their numbers would not match the list. Emulated foreign-architecture steps
//! (qemu-user) make host syscalls, so they are filtered like native ones.

use super::Power;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the sandbox's seccomp filter knows x86_64 and aarch64");

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

// BPF opcodes.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16;
const OFF_ARG1_LO: u32 = 24;

const NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u32;

/// Calls no step needs and every container runtime denies.
const DENIED: &[libc::c_long] = &[
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_fanotify_init,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
    libc::SYS_pivot_root,
    libc::SYS_setns,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// Denied unless the sandbox may mount ([`Power::Mounts`]: mmdebstrap checks that it may
/// unshare a mount namespace before it mounts anything).
const MOUNTS: &[libc::c_long] = &[
    libc::SYS_unshare,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
];

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program for `power`.
pub fn program(power: Power) -> Vec<libc::sock_filter> {
    let mut denied: Vec<libc::c_long> = DENIED.to_vec();
    if power != Power::Mounts {
        denied.extend_from_slice(MOUNTS);
    }
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        ins(LD_W_ABS, 0, 0, OFF_ARCH),
        ins(JEQ_K, 1, 0, AUDIT_ARCH),
        ins(RET_K, 0, 0, enosys),
        ins(LD_W_ABS, 0, 0, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 ABI: syscall numbers with bit 30 set.
        p.push(ins(JGE_K, 0, 1, 0x4000_0000));
        p.push(ins(RET_K, 0, 0, enosys));
    }
    p.push(ins(JEQ_K, 0, 1, libc::SYS_clone3 as u32));
    p.push(ins(RET_K, 0, 0, enosys));
    // clone(flags, ...): refuse new namespaces (flags are the low word of arg0 on both arches).
    p.push(ins(JEQ_K, 0, 4, libc::SYS_clone as u32));
    p.push(ins(LD_W_ABS, 0, 0, OFF_ARG0_LO));
    p.push(ins(JSET_K, 0, 1, NS_FLAGS));
    p.push(ins(RET_K, 0, 0, eperm));
    p.push(ins(RET_K, 0, 0, RET_ALLOW));
    // ioctl(fd, TIOCSTI | TIOCLINUX): typing into a terminal the command inherited (a debug
    // shell's, or webake's own when run from one) would run commands on the host after the
    // step ends (bubblewrap's CVE-2017-5226). The kernel reads the request as 32 bits.
    p.push(ins(JEQ_K, 0, 5, libc::SYS_ioctl as u32));
    p.push(ins(LD_W_ABS, 0, 0, OFF_ARG1_LO));
    p.push(ins(JEQ_K, 1, 0, libc::TIOCSTI as u32));
    p.push(ins(JEQ_K, 0, 1, libc::TIOCLINUX as u32));
    p.push(ins(RET_K, 0, 0, eperm));
    p.push(ins(RET_K, 0, 0, RET_ALLOW));
    for nr in denied {
        p.push(ins(JEQ_K, 0, 1, nr as u32));
        p.push(ins(RET_K, 0, 0, eperm));
    }
    p.push(ins(RET_K, 0, 0, RET_ALLOW));
    p
}

/// Install `prog` for this thread and its descendants (needs `no_new_privs` first).
/// Async-signal-safe: call between fork and exec.
pub fn install(prog: &[libc::sock_filter]) -> Result<(), &'static str> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid, live sock_fprog.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if r != 0 {
        return Err("installing the seccomp filter failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program() {
        for power in [Power::Step, Power::Mounts] {
            let p = program(power);
            assert!(p.len() < 4096);
            for (i, f) in p.iter().enumerate() {
                if f.code & 0x07 == 0x05 {
                    assert!(i + 1 + (f.jt.max(f.jf) as usize) < p.len(), "jump at {i}");
                }
            }
            assert_eq!(p.last().unwrap().k, RET_ALLOW);
        }
    }

    #[test]
    fn mounts_are_denied_only_without_the_mount_power() {
        let has = |p: &[libc::sock_filter], nr: libc::c_long| {
            p.iter().any(|f| f.code == JEQ_K && f.k == nr as u32)
        };
        assert!(has(&program(Power::Step), libc::SYS_mount));
        assert!(!has(&program(Power::Mounts), libc::SYS_mount));
        assert!(has(&program(Power::Mounts), libc::SYS_kexec_load));
    }

    #[test]
    fn terminal_input_injection_is_denied() {
        for power in [Power::Step, Power::Mounts] {
            let p = program(power);
            let at = p
                .iter()
                .position(|f| f.code == JEQ_K && f.k == libc::SYS_ioctl as u32)
                .expect("ioctl is filtered");
            assert_eq!(p[at + 1].k, OFF_ARG1_LO);
            assert_eq!(p[at + 2].k, libc::TIOCSTI as u32);
            assert_eq!(p[at + 3].k, libc::TIOCLINUX as u32);
            assert_eq!(p[at + 4].k, RET_ERRNO | libc::EPERM as u32);
        }
    }
}
