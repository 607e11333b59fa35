/*
 * fdb_io.h -- file reads and writes that may run with the GIL held.
 *
 * A block read from the page cache takes about a microsecond: the reader
 * keeps the GIL for it (releasing and winning back the GIL costs more, and a
 * running compaction wins it in between).  A block that must come from the
 * disk may take milliseconds: that read runs without the GIL.
 * fdb_pread_cached tells the two apart with RWF_NOWAIT (Linux 4.14+).
 *
 * Small appends to the WAL go to the page cache in microseconds too; the
 * caller decides when fdb_write_full runs with the GIL (flowdb/_fileio.py,
 * AppendWriter: buffered writes have no RWF_NOWAIT on ext4).
 */
#ifndef FDB_IO_H
#define FDB_IO_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* Reads n bytes at off if all of them are in the page cache: n, or fewer at
 * the end of the file, or -1 with errno (EAGAIN: not cached, or RWF_NOWAIT
 * unsupported here: read with fdb_pread_full instead). */
static inline ssize_t fdb_pread_cached(int fd, void *buf, size_t n, uint64_t off) {
#if defined(RWF_NOWAIT)
    struct iovec iov = { buf, n };
    ssize_t got;
    do {
        got = preadv2(fd, &iov, 1, (off_t)off, RWF_NOWAIT);
    } while (got < 0 && errno == EINTR);
    if (got < 0 && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL))
        errno = EAGAIN;
    else if (got >= 0 && (size_t)got < n)    /* part cached, or the end: the full read decides */
        { errno = EAGAIN; return -1; }
    return got;
#else
    (void)fd; (void)buf; (void)n; (void)off;
    errno = EAGAIN;
    return -1;
#endif
}

/* Reads up to n bytes at off, retrying short reads and EINTR: the bytes
 * read (< n only at the end of the file), or -1 with errno. */
static inline ssize_t fdb_pread_full(int fd, void *buf, size_t n, uint64_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Writes all n bytes at the file position, retrying short writes and EINTR:
 * n, or -1 with errno (some bytes may then be in the file). */
static inline ssize_t fdb_write_full(int fd, const void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = write(fd, (const char *)buf + done, n - done);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) { errno = EIO; return -1; }   /* never for a file; no endless loop */
        done += (size_t)r;
    }
    return (ssize_t)n;
}

#endif /* FDB_IO_H */
