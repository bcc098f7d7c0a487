//! The default seccomp filter: a classic-BPF program built here (no C
//! libseccomp, so every target cross-builds) and installed by the container's
//! executor right before it executes the workload.
//!
//! The filter allows by default and denies with `EPERM` the system calls a
//! workload has no business making: mounting, module loading, kexec, keyrings,
//! bpf, ptrace and cross-process memory access, swap, reboot, clock setting,
//! perf events, userfaultfd, handle-based opens and the new mount API.
//! `unshare` and `clone` are denied when they ask for a new user namespace;
//! `clone3` (whose flags live in memory a filter cannot read) fails with
//! `ENOSYS`, so C libraries fall back to `clone`. System calls of a foreign
//! architecture (for example the i386 ABI on x86-64) kill the process.

use std::io;

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of `args[0]` (little-endian layouts only; all supported targets are).
const OFF_ARG0_LO: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "arm")]
const AUDIT_ARCH: u32 = 0x4000_0028;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xc000_00f3;

/// System calls denied with `EPERM` on every architecture.
const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
];

#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[libc::c_long] = &[
    libc::SYS_kexec_file_load,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_uselib,
    libc::SYS_lookup_dcookie,
];
/// `kexec_file_load` in the generic system call table (the libc crate
/// names it for aarch64 glibc only, not musl).
#[cfg(target_arch = "aarch64")]
const DENIED_ARCH: &[libc::c_long] = &[294, libc::SYS_lookup_dcookie];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const DENIED_ARCH: &[libc::c_long] = &[];

/// Denied when `args[0]` (the flags) has `CLONE_NEWUSER`.
const DENIED_NEWUSER: &[libc::c_long] = &[libc::SYS_unshare, libc::SYS_clone];

/// One classic-BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

fn nr(n: libc::c_long) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Builds the default filter program.
pub fn default_program() -> Vec<Insn> {
    let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        // The x32 ABI shares AUDIT_ARCH_X86_64 and sets bit 30 of the number.
        p.push(jump(BPF_JGE_K, 0x4000_0000, 0, 1));
        p.push(stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    for &n in DENIED.iter().chain(DENIED_ARCH) {
        p.push(jump(BPF_JEQ_K, nr(n), 0, 1));
        p.push(stmt(BPF_RET_K, eperm));
    }
    p.push(jump(BPF_JEQ_K, nr(libc::SYS_clone3), 0, 1));
    p.push(stmt(BPF_RET_K, enosys));
    for &n in DENIED_NEWUSER {
        p.push(jump(BPF_JEQ_K, nr(n), 0, 4));
        p.push(stmt(BPF_LD_W_ABS, OFF_ARG0_LO));
        p.push(jump(BPF_JSET_K, libc::CLONE_NEWUSER as u32, 0, 1));
        p.push(stmt(BPF_RET_K, eperm));
        p.push(stmt(BPF_LD_W_ABS, OFF_NR));
    }
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p
}

/// Installs `program` on the calling thread. `no_new_privs` must already be set
/// (the container init sets it from the spec before the executor runs).
pub fn install(program: &[Insn]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::other("seccomp program too long"))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `Insn` is `repr(C)` with the layout of `struct sock_filter`; `prog`
    // points at `program`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the subset of BPF the builder emits.
    fn run(p: &[Insn], arch: u32, nr: u32, arg0: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    a = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0_LO => arg0,
                        k => panic!("load {k}"),
                    }
                }
                BPF_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                BPF_JGE_K => pc += usize::from(if a >= i.k { i.jt } else { i.jf }),
                BPF_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
                BPF_RET_K => return i.k,
                c => panic!("code {c}"),
            }
        }
    }

    #[test]
    fn filter_decisions() {
        let p = default_program();
        let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let newuser = libc::CLONE_NEWUSER as u32;
        assert_eq!(run(&p, AUDIT_ARCH, nr(libc::SYS_mount), 0), eperm);
        assert_eq!(run(&p, AUDIT_ARCH, nr(libc::SYS_bpf), 0), eperm);
        assert_eq!(run(&p, AUDIT_ARCH, nr(libc::SYS_ptrace), 0), eperm);
        assert_eq!(run(&p, AUDIT_ARCH, nr(libc::SYS_keyctl), 0), eperm);
        assert_eq!(run(&p, AUDIT_ARCH, nr(libc::SYS_unshare), newuser), eperm);
        assert_eq!(
            run(
                &p,
                AUDIT_ARCH,
                nr(libc::SYS_unshare),
                libc::CLONE_NEWNS as u32
            ),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            run(&p, AUDIT_ARCH, nr(libc::SYS_clone), newuser | 17),
            eperm
        );
        assert_eq!(
            run(&p, AUDIT_ARCH, nr(libc::SYS_clone), 17),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            run(&p, AUDIT_ARCH, nr(libc::SYS_clone3), 0),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(
            run(&p, AUDIT_ARCH, nr(libc::SYS_read), 0),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            run(&p, AUDIT_ARCH, nr(libc::SYS_getpid), 0),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            run(&p, 0x4000_0003, nr(libc::SYS_read), 0),
            SECCOMP_RET_KILL_PROCESS
        );
        assert!(p.len() < 200);
    }
}
