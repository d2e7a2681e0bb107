/*
 * A test double of the kernel's VFIO migration interface, loaded by devmig's kernel backend in place
 * of libc. It answers open/close/ioctl for /dev/vfio/... and /dev/iommu, forwards everything else to
 * the real libc, and hands out real pipe fds as data_fd:
 *   STOP -> STOP_COPY, RUNNING(_P2P) -> PRE_COPY(_P2P): a pipe's read end; a thread writes the state
 *     ("VDBL", u64 size, the bytes, u32 FNV-1a of the bytes) and closes it (EOF).
 *   STOP -> RESUMING: a pipe's write end; a thread reads to EOF. RESUMING -> STOP validates what came
 *     (magic, size, checksum; short, long or corrupt fails EINVAL) and adopts it.
 * Like a driver it accepts only the single arcs a driver implements for its flags; ERROR is left only
 * by VFIO_DEVICE_RESET. Configuration (read at each open of a device):
 *   VFIO_DOUBLE_FLAGS=7  VFIO_DOUBLE_SIZE=65536  VFIO_DOUBLE_SEED=1  VFIO_DOUBLE_NOMIG=1
 *   VFIO_DOUBLE_NOT_VIABLE=1  VFIO_DOUBLE_FAIL_ARC=FROM>TO:ERRNO[:ERROR]  VFIO_DOUBLE_RESUME_ERROR=1
 * vfio_double_digest(fd) returns the FNV-1a of a device's state, so tests can prove a transfer exact.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define MAXFD 4096
enum kind { NONE, CONTAINER, GROUP, IOMMU, DEVICE };
enum { ERR = 0, STOP = 1, RUNNING = 2, STOP_COPY = 3, RESUMING = 4, RUNNING_P2P = 5, PRE_COPY = 6, PRE_COPY_P2P = 7 };
#define MIG_DATA_SIZE_FEATURE 9
#define PRECOPY_INFO_IOCTL _IO(VFIO_TYPE, VFIO_BASE + 21)
#define BIND_IOMMUFD_IOCTL _IO(VFIO_TYPE, VFIO_BASE + 18)

struct device {
  int state, flags, nomig, fail_from, fail_to, fail_errno, fail_to_error, resume_error;
  size_t size;
  uint8_t *data;
  int save_fd;           /* our copy of the read end handed out, to answer PRECOPY_INFO */
  pthread_t writer, reader;
  int writer_on, reader_on;
  uint8_t *got; size_t got_len, got_cap; int resume_rd;
};
static enum kind kinds[MAXFD];
static struct device *devices[MAXFD];
static struct device *save_owner[MAXFD];
static int not_viable;

static int (*real_open)(const char *, int, ...);
static int (*real_close)(int);
static int (*real_ioctl)(int, unsigned long, ...);
static void init(void) {
  if (!real_open) {
    real_open = dlsym(RTLD_NEXT, "open");
    real_close = dlsym(RTLD_NEXT, "close");
    real_ioctl = dlsym(RTLD_NEXT, "ioctl");
  }
}
static long envl(const char *k, long d) { const char *v = getenv(k); return v ? strtol(v, 0, 0) : d; }
static uint32_t fnv(const uint8_t *p, size_t n) { uint32_t h = 2166136261u; while (n--) h = (h ^ *p++) * 16777619u; return h; }
static int fail(int e) { errno = e; return -1; }

static int state_of(const char *s) {
  static const char *names[] = {"ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"};
  for (int i = 0; i < 8; i++) if (!strcmp(s, names[i])) return i;
  return -1;
}

static struct device *new_device(void) {
  struct device *d = calloc(1, sizeof *d);
  d->state = RUNNING; d->flags = envl("VFIO_DOUBLE_FLAGS", 7); d->nomig = envl("VFIO_DOUBLE_NOMIG", 0);
  d->size = envl("VFIO_DOUBLE_SIZE", 65536); d->resume_error = envl("VFIO_DOUBLE_RESUME_ERROR", 0);
  d->data = malloc(d->size); d->save_fd = -1; d->fail_from = -1;
  uint32_t x = envl("VFIO_DOUBLE_SEED", 1) * 2654435761u + 1;
  for (size_t i = 0; i < d->size; i++) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; d->data[i] = x; }
  const char *f = getenv("VFIO_DOUBLE_FAIL_ARC");
  if (f) {
    char from[32], to[32], err[16] = "";
    if (sscanf(f, "%31[A-Z_2]>%31[A-Z_2]:%d:%15s", from, to, &d->fail_errno, err) >= 3) {
      d->fail_from = state_of(from); d->fail_to = state_of(to); d->fail_to_error = !strcmp(err, "ERROR");
    }
  }
  return d;
}

static int fake_open(const char *path, enum kind k);

int open(const char *path, int flags, ...) {
  init();
  enum kind k = !strcmp(path, "/dev/vfio/vfio") ? CONTAINER : !strcmp(path, "/dev/iommu") ? IOMMU
              : !strncmp(path, "/dev/vfio/devices/vfio", 22) ? DEVICE : !strncmp(path, "/dev/vfio/", 10) ? GROUP : NONE;
  if (k == NONE) { va_list ap; va_start(ap, flags); int mode = va_arg(ap, int); va_end(ap); return real_open(path, flags, mode); }
  return fake_open(path, k);
}

static int fake_open(const char *path, enum kind k) {
  (void)path;
  int fd = real_open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd < 0 || fd >= MAXFD) return fail(EMFILE);
  kinds[fd] = k;
  if (k == GROUP) not_viable = envl("VFIO_DOUBLE_NOT_VIABLE", 0);
  if (k == DEVICE) devices[fd] = new_device();
  return fd;
}

static void stop_threads(struct device *d) {
  if (d->writer_on) { pthread_join(d->writer, 0); d->writer_on = 0; }
  if (d->reader_on) { pthread_join(d->reader, 0); d->reader_on = 0; }
}

int close(int fd) {
  init();
  if (fd >= 0 && fd < MAXFD) {
    if (save_owner[fd]) { save_owner[fd]->save_fd = -1; save_owner[fd] = 0; }
    if (kinds[fd] == DEVICE && devices[fd]) {
      struct device *d = devices[fd];
      devices[fd] = 0;
      stop_threads(d);
      free(d->data); free(d->got); free(d);
    }
    kinds[fd] = NONE;
  }
  return real_close(fd);
}

struct job { struct device *d; int fd; };
static void *writer(void *arg) {
  struct job *j = arg; struct device *d = j->d; int fd = j->fd; free(j);
  uint8_t head[12] = {'V', 'D', 'B', 'L'}; uint64_t n = d->size; memcpy(head + 4, &n, 8);
  uint32_t sum = fnv(d->data, d->size);
  if (write(fd, head, 12) == 12) {
    size_t at = 0;
    while (at < d->size) { ssize_t w = write(fd, d->data + at, d->size - at); if (w <= 0) break; at += w; }
    if (write(fd, &sum, 4) != 4) { /* reader went away */ }
  }
  real_close(fd);
  return 0;
}
static void *reader(void *arg) {
  struct device *d = arg; uint8_t buf[65536]; ssize_t r;
  while ((r = read(d->resume_rd, buf, sizeof buf)) > 0) {
    if (d->got_len + r > d->got_cap) { d->got_cap = (d->got_len + r) * 2; d->got = realloc(d->got, d->got_cap); }
    memcpy(d->got + d->got_len, buf, r); d->got_len += r;
  }
  real_close(d->resume_rd);
  return 0;
}

static int open_save(int devfd, struct device *d) {
  int p[2]; if (pipe2(p, O_CLOEXEC)) return -1;
  struct job *j = malloc(sizeof *j); j->d = d; j->fd = p[1];
  stop_threads(d);
  pthread_create(&d->writer, 0, writer, j); d->writer_on = 1;
  d->save_fd = p[0]; save_owner[p[0]] = d; (void)devfd;
  return p[0];
}
static int open_resume(struct device *d) {
  int p[2]; if (pipe2(p, O_CLOEXEC)) return -1;
  stop_threads(d);
  d->got_len = 0; d->resume_rd = p[0];
  pthread_create(&d->reader, 0, reader, d); d->reader_on = 1;
  return p[1];
}
static int commit(struct device *d) {
  stop_threads(d); /* the reader ends at EOF: every write end must be closed */
  uint64_t n = 0; uint32_t sum = 0;
  if (d->got_len >= 12) memcpy(&n, d->got + 4, 8);
  int ok = d->got_len == 12 + d->size + 4 && !memcmp(d->got, "VDBL", 4) && n == d->size;
  if (ok) { memcpy(&sum, d->got + 12 + d->size, 4); ok = sum == fnv(d->got + 12, d->size); }
  if (!ok) return -1;
  memcpy(d->data, d->got + 12, d->size);
  return 0;
}

/* The single arcs a driver implements for its flags (the comment above vfio_mig_get_next_state). */
static int implemented(int from, int to, int flags) {
  int p2p = flags & VFIO_MIGRATION_P2P, pre = flags & (1 << 2);
  if ((from == RESUMING && to == STOP) || (from == STOP && (to == RESUMING || to == STOP_COPY)) || (from == STOP_COPY && to == STOP)) return 1;
  if (p2p && ((from == RUNNING && to == RUNNING_P2P) || (from == RUNNING_P2P && (to == RUNNING || to == STOP)) || (from == STOP && to == RUNNING_P2P))) return 1;
  if (!p2p && ((from == RUNNING && to == STOP) || (from == STOP && to == RUNNING))) return 1;
  if (pre && ((from == RUNNING && to == PRE_COPY) || (from == PRE_COPY && to == RUNNING))) return 1;
  if (pre && !p2p && from == PRE_COPY && to == STOP_COPY) return 1;
  if (pre && p2p && ((from == PRE_COPY && to == PRE_COPY_P2P) || (from == PRE_COPY_P2P && (to == PRE_COPY || to == RUNNING_P2P || to == STOP_COPY)) || (from == RUNNING_P2P && to == PRE_COPY_P2P))) return 1;
  return 0;
}

static int set_state(int fd, struct device *d, struct vfio_device_feature_mig_state *m) {
  int from = d->state, to = m->device_state;
  m->data_fd = -1;
  if (from == ERR || to > PRE_COPY_P2P || !implemented(from, to, d->flags)) return fail(EINVAL);
  if (from == d->fail_from && to == d->fail_to) { if (d->fail_to_error) d->state = ERR; return fail(d->fail_errno); }
  if (from == RESUMING && commit(d)) { if (d->resume_error) d->state = ERR; return fail(EINVAL); }
  if ((from == STOP && to == STOP_COPY) || ((from == RUNNING && to == PRE_COPY) || (from == RUNNING_P2P && to == PRE_COPY_P2P))) {
    m->data_fd = open_save(fd, d);
  } else if (to == RESUMING) {
    m->data_fd = open_resume(d);
  }
  d->state = to;
  return 0;
}

static int feature(int fd, struct device *d, struct vfio_device_feature *f) {
  uint32_t op = f->flags & VFIO_DEVICE_FEATURE_MASK;
  if (f->argsz < sizeof *f) return fail(EINVAL);
  size_t payload = f->argsz - sizeof *f;
  if (d->nomig && (op == VFIO_DEVICE_FEATURE_MIGRATION || op == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE || op == MIG_DATA_SIZE_FEATURE)) return fail(ENOTTY);
  if (op == VFIO_DEVICE_FEATURE_MIGRATION && (f->flags & VFIO_DEVICE_FEATURE_GET) && payload >= 8) { uint64_t fl = d->flags; memcpy(f->data, &fl, 8); return 0; }
  if (op == MIG_DATA_SIZE_FEATURE && (f->flags & VFIO_DEVICE_FEATURE_GET) && payload >= 8) { uint64_t n = d->size + 16; memcpy(f->data, &n, 8); return 0; }
  if (op == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && payload >= sizeof(struct vfio_device_feature_mig_state)) {
    struct vfio_device_feature_mig_state *m = (void *)f->data;
    if (f->flags & VFIO_DEVICE_FEATURE_GET) { m->device_state = d->state; m->data_fd = -1; return 0; }
    if (f->flags & VFIO_DEVICE_FEATURE_SET) return set_state(fd, d, m);
  }
  return fail(EINVAL);
}

int ioctl(int fd, unsigned long req, ...) {
  init();
  va_list ap; va_start(ap, req); void *arg = va_arg(ap, void *); va_end(ap);
  if (fd < 0 || fd >= MAXFD || (kinds[fd] == NONE && !save_owner[fd])) return real_ioctl(fd, req, arg);
  if (save_owner[fd] && req == PRECOPY_INFO_IOCTL) {
    uint32_t *p = arg; if (p[0] < 24) return fail(EINVAL);
    uint64_t init_bytes = save_owner[fd]->size + 16, dirty = 0;
    if (save_owner[fd]->state != PRE_COPY && save_owner[fd]->state != PRE_COPY_P2P) return fail(EINVAL);
    memcpy(p + 2, &init_bytes, 8); memcpy(p + 4, &dirty, 8); return 0;
  }
  switch (kinds[fd]) {
  case CONTAINER:
    if (req == VFIO_GET_API_VERSION) return VFIO_API_VERSION;
    if (req == VFIO_SET_IOMMU) return (long)arg == VFIO_TYPE1v2_IOMMU ? 0 : fail(EINVAL);
    return fail(ENOTTY);
  case GROUP:
    if (req == VFIO_GROUP_GET_STATUS) { struct vfio_group_status *s = arg; s->flags = not_viable ? 0 : VFIO_GROUP_FLAGS_VIABLE; return 0; }
    if (req == VFIO_GROUP_SET_CONTAINER) return kinds[*(int *)arg] == CONTAINER ? 0 : fail(EBADF);
    if (req == VFIO_GROUP_GET_DEVICE_FD) return fake_open((const char *)arg, DEVICE);
    return fail(ENOTTY);
  case DEVICE: {
    struct device *d = devices[fd];
    if (req == BIND_IOMMUFD_IOCTL) { uint32_t *b = arg; return b[0] >= 16 && kinds[(int)b[2]] == IOMMU ? 0 : fail(EINVAL); }
    if (req == VFIO_DEVICE_RESET) { stop_threads(d); d->state = RUNNING; return 0; }
    if (req == VFIO_DEVICE_FEATURE) return feature(fd, d, arg);
    return fail(ENOTTY);
  }
  default:
    return fail(ENOTTY);
  }
}

uint32_t vfio_double_digest(int fd) {
  return fd >= 0 && fd < MAXFD && devices[fd] ? fnv(devices[fd]->data, devices[fd]->size) : 0;
}
