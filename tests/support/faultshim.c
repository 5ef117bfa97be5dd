/*
 * faultshim: an LD_PRELOAD library that makes the libc file calls of one
 * process fail on demand, for paths under one folder (HARDENING D11, D12).
 *
 * Test support only: tests/support/faultshim.py compiles it with gcc into a
 * temporary folder and starts the gateway with it in LD_PRELOAD.  The test
 * then switches faults on and off while the gateway runs, by writing or
 * removing a control file.
 *
 * Environment (read once, at load):
 *   FAULTSHIM_PREFIX   absolute folder; only paths under it are faulted
 *   FAULTSHIM_CONTROL  the control file; absent or empty: no fault
 *   FAULTSHIM_LOG      optional; one line appended per injected failure
 *                      ("<op> <errno> <path or fd>"), so a test can prove
 *                      the fault was hit (a preload that silently did
 *                      nothing would otherwise pass as "no fault").
 *
 * Control file: one line "<op> <errno> [<bytes>]" where <op> is one of
 *   write   write/pwrite/writev on a descriptor opened under the prefix;
 *           with <bytes>, each descriptor may first write that many bytes
 *           (the last write is cut short), then fails: a disk that fills
 *           in the middle of a file (ENOSPC mid-write)
 *   fsync   fsync/fdatasync of such a descriptor (files and folders)
 *   rename  rename/renameat/renameat2 whose source or target is under it
 *   open    open/openat for writing or creating under it
 * and <errno> is a number (5 EIO, 28 ENOSPC, 30 EROFS, 122 EDQUOT).
 *
 * Or one line "stop <point> <substring>": the process stops itself
 * (SIGSTOP, every thread) at that point of a call on a descriptor whose
 * path, under the prefix, contains <substring>, so a test can kill -9 it
 * exactly there (issue 13's kill tests).  Points:
 *   write    before a write/pwrite on it
 *   sync     before an fsync/fdatasync of it
 *   synced   after an fsync/fdatasync of it returned
 * The stop is logged as "stop 0 <path>" before it happens.
 *
 * The control file is read with raw system calls, so reading it never goes
 * through the wrappers.  Descriptors are tracked in a fixed table (fds
 * beyond it are never faulted).  Unlink and close are never faulted: the
 * gateway's clean-up must be able to run.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 65536

static char prefix[4096];
static size_t prefix_len;
static char control[4096];
static char logpath[4096];
/* 1 when the descriptor was opened under the prefix. */
static volatile unsigned char tracked[MAX_FDS];
/* Bytes written through each tracked descriptor since it was opened. */
static volatile long long written[MAX_FDS];

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);

__attribute__((constructor)) static void faultshim_init(void) {
    const char *p = getenv("FAULTSHIM_PREFIX");
    const char *c = getenv("FAULTSHIM_CONTROL");
    const char *l = getenv("FAULTSHIM_LOG");
    if (p) { strncpy(prefix, p, sizeof prefix - 1); prefix_len = strlen(prefix); }
    if (c) strncpy(control, c, sizeof control - 1);
    if (l) strncpy(logpath, l, sizeof logpath - 1);
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_renameat = dlsym(RTLD_NEXT, "renameat");
    real_renameat2 = dlsym(RTLD_NEXT, "renameat2");
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real_close = dlsym(RTLD_NEXT, "close");
}

/* Whether an absolute path lies under the prefix. */
static int under(const char *path) {
    if (!prefix_len || !path || path[0] != '/') return 0;
    if (strncmp(path, prefix, prefix_len) != 0) return 0;
    return path[prefix_len] == '/' || path[prefix_len] == '\0';
}

/* Read the control file: is <op> armed?  Fills the errno and byte budget. */
static int armed(const char *op, int *err, long long *budget) {
    char buf[256];
    char name[32];
    int e = 0;
    long long b = -1;
    long fd;
    long n;
    if (!control[0]) return 0;
    fd = syscall(SYS_openat, AT_FDCWD, control, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    n = syscall(SYS_read, (int)fd, buf, sizeof buf - 1);
    syscall(SYS_close, (int)fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    if (sscanf(buf, "%31s %d %lld", name, &e, &b) < 2) return 0;
    if (strcmp(name, op) != 0) return 0;
    *err = e;
    *budget = b;
    return 1;
}

/* Append "<op> <errno> <what>" to the log, with raw system calls. */
static void note(const char *op, int err, const char *what) {
    char line[4352];
    long fd;
    int n;
    if (!logpath[0]) return;
    n = snprintf(line, sizeof line, "%s %d %s\n", op, err, what);
    if (n <= 0) return;
    if (n > (int)sizeof line - 1) n = sizeof line - 1;
    fd = syscall(SYS_openat, AT_FDCWD, logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return;
    syscall(SYS_write, (int)fd, line, (size_t)n);
    syscall(SYS_close, (int)fd);
}

static void note_fd(const char *op, int err, int fd) {
    char what[4200];
    char link[64];
    ssize_t n;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = syscall(SYS_readlinkat, AT_FDCWD, link, what, sizeof what - 1);
    if (n < 0) n = 0;
    what[n] = '\0';
    note(op, err, what);
}

/* "stop <point> <substring>": stop the whole process here if the descriptor's path matches. */
static void maybe_stop(const char *point, int fd) {
    char buf[512];
    char kind[32];
    char target[256];
    char link[64];
    char path[4200];
    long cfd;
    long n;
    ssize_t len;
    if (!control[0]) return;
    cfd = syscall(SYS_openat, AT_FDCWD, control, O_RDONLY | O_CLOEXEC);
    if (cfd < 0) return;
    n = syscall(SYS_read, (int)cfd, buf, sizeof buf - 1);
    syscall(SYS_close, (int)cfd);
    if (n <= 0) return;
    buf[n] = '\0';
    if (sscanf(buf, "stop %31s %255s", kind, target) != 2) return;
    if (strcmp(kind, point) != 0) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    len = syscall(SYS_readlinkat, AT_FDCWD, link, path, sizeof path - 1);
    if (len <= 0) return;
    path[len] = '\0';
    if (!under(path) || !strstr(path, target)) return;
    note("stop", 0, path);
    syscall(SYS_kill, getpid(), SIGSTOP);
}

/* Resolve the real functions if a wrapper runs before the constructor. */
static void ensure(void) {
    if (!real_close) faultshim_init();
}

static int is_tracked(int fd) { return fd >= 0 && fd < MAX_FDS && tracked[fd]; }

/*
 * How many of ``count`` bytes a write on ``fd`` may put down, or -1 with
 * errno set when it must fail outright.
 */
static ssize_t allowance(int fd, size_t count) {
    int err;
    long long budget;
    if (!is_tracked(fd) || !armed("write", &err, &budget)) return (ssize_t)count;
    if (budget >= 0 && written[fd] < budget) {
        long long left = budget - written[fd];
        return (ssize_t)((long long)count < left ? (long long)count : left);
    }
    note_fd("write", err, fd);
    errno = err;
    return -1;
}

ssize_t write(int fd, const void *buf, size_t count) {
    ensure();
    maybe_stop("write", fd);
    ssize_t allowed = allowance(fd, count);
    ssize_t n;
    if (allowed < 0) return -1;
    n = real_write(fd, buf, (size_t)allowed);
    if (n > 0 && is_tracked(fd)) written[fd] += n;
    return n;
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    ensure();
    maybe_stop("write", fd);
    ssize_t allowed = allowance(fd, count);
    ssize_t n;
    if (allowed < 0) return -1;
    n = real_pwrite(fd, buf, (size_t)allowed, offset);
    if (n > 0 && is_tracked(fd)) written[fd] += n;
    return n;
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    ensure();
    maybe_stop("write", fd);
    ssize_t allowed = allowance(fd, count);
    ssize_t n;
    if (allowed < 0) return -1;
    n = real_pwrite64(fd, buf, (size_t)allowed, offset);
    if (n > 0 && is_tracked(fd)) written[fd] += n;
    return n;
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    ensure();
    int err;
    long long budget;
    if (is_tracked(fd) && armed("write", &err, &budget)) {
        note_fd("write", err, fd);
        errno = err;
        return -1;
    }
    return real_writev(fd, iov, iovcnt);
}

int fsync(int fd) {
    ensure();
    int err;
    long long budget;
    if (is_tracked(fd) && armed("fsync", &err, &budget)) {
        note_fd("fsync", err, fd);
        errno = err;
        return -1;
    }
    maybe_stop("sync", fd);
    {
        int r = real_fsync(fd);
        if (r == 0) maybe_stop("synced", fd);
        return r;
    }
}

int fdatasync(int fd) {
    ensure();
    int err;
    long long budget;
    if (is_tracked(fd) && armed("fsync", &err, &budget)) {
        note_fd("fsync", err, fd);
        errno = err;
        return -1;
    }
    maybe_stop("sync", fd);
    {
        int r = real_fdatasync(fd);
        if (r == 0) maybe_stop("synced", fd);
        return r;
    }
}

static int rename_fault(const char *from, const char *to) {
    int err;
    long long budget;
    if ((under(from) || under(to)) && armed("rename", &err, &budget)) {
        note("rename", err, from);
        errno = err;
        return 1;
    }
    return 0;
}

int rename(const char *from, const char *to) {
    ensure();
    if (rename_fault(from, to)) return -1;
    return real_rename(from, to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
    ensure();
    if (rename_fault(from, to)) return -1;
    return real_renameat(fromfd, from, tofd, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
    ensure();
    if (rename_fault(from, to)) return -1;
    return real_renameat2(fromfd, from, tofd, to, flags);
}

/* The open-side bookkeeping shared by every open variant. */
static int opened(const char *path, int flags, int fd) {
    if (fd >= 0 && fd < MAX_FDS) {
        tracked[fd] = (unsigned char)under(path);
        written[fd] = 0;
    }
    (void)flags;
    return fd;
}

static int open_fault(const char *path, int flags) {
    int err;
    long long budget;
    int writing = (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0;
    if (writing && under(path) && armed("open", &err, &budget)) {
        note("open", err, path);
        errno = err;
        return 1;
    }
    return 0;
}

#define MODE_ARG(flags, mode)                                 \
    do {                                                      \
        if ((flags) & (O_CREAT | O_TMPFILE)) {                \
            va_list ap;                                       \
            va_start(ap, flags);                              \
            mode = (mode_t)va_arg(ap, int);                   \
            va_end(ap);                                       \
        }                                                     \
    } while (0)

int open(const char *path, int flags, ...) {
    ensure();
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    if (open_fault(path, flags)) return -1;
    return opened(path, flags, real_open(path, flags, mode));
}

int open64(const char *path, int flags, ...) {
    ensure();
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    if (open_fault(path, flags)) return -1;
    return opened(path, flags, real_open64(path, flags, mode));
}

int openat(int dirfd, const char *path, int flags, ...) {
    ensure();
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    if (open_fault(path, flags)) return -1;
    return opened(path, flags, real_openat(dirfd, path, flags, mode));
}

int openat64(int dirfd, const char *path, int flags, ...) {
    ensure();
    mode_t mode = 0;
    MODE_ARG(flags, mode);
    if (open_fault(path, flags)) return -1;
    return opened(path, flags, real_openat64(dirfd, path, flags, mode));
}

int close(int fd) {
    ensure();
    if (fd >= 0 && fd < MAX_FDS) {
        tracked[fd] = 0;
        written[fd] = 0;
    }
    return real_close(fd);
}
