/* probe: reports, from inside a container, the security profile it runs under.
 *
 *   probe profile        everything below except the resource hogs
 *   probe status         capabilities, no_new_privs, seccomp, id maps, cwd, fds
 *   probe syscalls       result of each syscall the default filter must deny
 *   probe write PATH     try to create PATH
 *   probe exec PATH      try to execute PATH
 *   probe forkbomb       fork until refused; report how many
 *   probe memhog MIB     allocate and touch MIB mebibytes
 *   probe net            network interfaces
 *
 * Output is `key=value` lines, easy to assert on. Static, no libc beyond glibc's
 * static archive, so it runs in a busybox rootfs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *res(long rc) {
    static char buf[64];
    if (rc >= 0) return "ok";
    snprintf(buf, sizeof buf, "%s", strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
    return buf;
}

static void cat_keys(const char *path, const char **keys) {
    FILE *f = fopen(path, "r");
    char line[512];
    if (!f) { printf("%s=unreadable(%s)\n", path, res(-1)); return; }
    while (fgets(line, sizeof line, f))
        for (const char **k = keys; *k; k++)
            if (!strncmp(line, *k, strlen(*k)) && line[strlen(*k)] == ':') {
                char *v = line + strlen(*k) + 1;
                while (*v == ' ' || *v == '\t') v++;
                printf("%s=%s", *k, v);
            }
    fclose(f);
}

static void cat_map(const char *name, const char *path) {
    FILE *f = fopen(path, "r");
    unsigned long a, b, c;
    if (!f) { printf("%s=unreadable\n", name); return; }
    while (fscanf(f, "%lu %lu %lu", &a, &b, &c) == 3) printf("%s=%lu %lu %lu\n", name, a, b, c);
    fclose(f);
}

static void status(void) {
    const char *keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", NULL};
    char cwd[4096];
    cat_keys("/proc/self/status", keys);
    cat_map("uid_map", "/proc/self/uid_map");
    cat_map("gid_map", "/proc/self/gid_map");
    printf("uid=%d gid=%d pid=%d\n", getuid(), getgid(), getpid());
    printf("cwd=%s\n", getcwd(cwd, sizeof cwd) ? cwd : res(-1));
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    printf("fds=");
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d)) printf("%s,", e->d_name);
    printf("\n");
    if (d) closedir(d);
}

static void syscalls(void) {
    printf("mount=%s\n", res(mount("none", "/tmp", "tmpfs", 0, NULL)));
    printf("unshare_user=%s\n", res(unshare(CLONE_NEWUSER)));
    printf("unshare_ns=%s\n", res(unshare(CLONE_NEWNS)));
    printf("keyctl=%s\n", res(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0)));
    printf("add_key=%s\n", res(syscall(SYS_add_key, "user", "k", "v", 1, -3)));
    printf("bpf=%s\n", res(syscall(SYS_bpf, 0, NULL, 0)));
    printf("ptrace=%s\n", res(ptrace(PTRACE_TRACEME, 0, NULL, NULL)));
    printf("chroot=%s\n", res(chroot("/")));
    printf("sethostname=%s\n", res(sethostname("x", 1)));
}

static void try_write(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    printf("write %s=%s\n", path, res(fd));
    if (fd >= 0) close(fd);
}

static void try_exec(const char *path) {
    pid_t p = fork();
    if (p == 0) {
        char *argv[] = {(char *)path, NULL};
        execv(path, argv);
        printf("exec %s=%s\n", path, res(-1));
        fflush(stdout);
        _exit(127);
    }
    int st;
    waitpid(p, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) != 127) printf("exec %s=ok\n", path);
}

static void forkbomb(void) {
    int n = 0;
    for (;;) {
        pid_t p = fork();
        if (p < 0) { printf("fork=%s count=%d\n", res(-1), n); fflush(stdout); break; }
        if (p == 0) { pause(); _exit(0); }
        n++;
        if (n > 100000) { printf("fork=unbounded count=%d\n", n); break; }
    }
    kill(0, SIGKILL);
}

static void memhog(long mib) {
    printf("memhog start=%ld\n", mib);
    fflush(stdout);
    for (long i = 0; i < mib; i++) {
        char *p = malloc(1 << 20);
        if (!p) { printf("memhog malloc-failed at=%ld\n", i); return; }
        memset(p, 1, 1 << 20);
    }
    printf("memhog survived=%ld\n", mib);
}

static void net(void) {
    DIR *d = opendir("/sys/class/net");
    struct dirent *e;
    printf("interfaces=");
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') printf("%s,", e->d_name);
    printf("\n");
    if (d) closedir(d);
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "profile";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(cmd, "status")) status();
    else if (!strcmp(cmd, "syscalls")) syscalls();
    else if (!strcmp(cmd, "write") && argc > 2) try_write(argv[2]);
    else if (!strcmp(cmd, "exec") && argc > 2) try_exec(argv[2]);
    else if (!strcmp(cmd, "forkbomb")) forkbomb();
    else if (!strcmp(cmd, "memhog") && argc > 2) memhog(atol(argv[2]));
    else if (!strcmp(cmd, "net")) net();
    else if (!strcmp(cmd, "profile")) {
        status();
        syscalls();
        try_write("/probe-root-write");
        try_write("/tmp/probe-tmp-write");
        net();
    } else {
        fprintf(stderr, "usage: probe profile|status|syscalls|write PATH|exec PATH|forkbomb|memhog MIB|net\n");
        return 2;
    }
    return 0;
}
