/*
 * vfio_double: a test double of the kernel's VFIO ioctl interface, loaded by devmig's kernel backend
 * in place of libc (koffi.load). It exports open/close/ioctl (and read, used only when the library is
 * LD_PRELOADed) with libc's signatures; paths under its fake root and the fds it hands out are
 * answered here, everything else goes to the real libc (dlsym RTLD_NEXT).
 *
 * Fake paths (ROOT is "" unless configured, so /dev/vfio/... itself is faked):
 *   ROOT/dev/vfio/vfio               container       GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU
 *   ROOT/dev/vfio/<N>                group           GET_STATUS, SET_CONTAINER, GET_DEVICE_FD(BDF or mdev UUID)
 *   ROOT/dev/vfio/devices/vfio<N>    device (cdev)   BIND_IOMMUFD first, then as below
 *   ROOT/dev/iommu                   iommufd
 * Device fds answer VFIO_DEVICE_FEATURE (MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE) with the
 * argument checks of vfio_ioctl_device_feature()/vfio_check_feature(), and VFIO_DEVICE_RESET.
 * Every open of a device is an independent device instance (its state lives as long as that fd,
 * which is what "closing the last fd resets the device" means when there is one fd).
 *
 * The FSM. A SET walks this file's own transcription of the kernel's vfio_mig_get_next_state()
 * table one driver arc at a time, as a driver's migration_set_state() does, so combination
 * transitions are accepted exactly as the kernel accepts them; each step must be an arc the driver
 * implements for its flags (the list in the comment above that table). Unlike kernels before the
 * 2026 fix, a walk that reaches ERROR (STOP_COPY -> PRE_COPY) is refused with EINVAL instead of
 * spinning. devmig's KernelDevice sends single arcs; vfio_double_arcs() shows what the device did.
 *
 * data_fd. STOP -> STOP_COPY and RUNNING(_P2P) -> PRE_COPY(_P2P) return the read end of a real pipe
 * that a writer thread feeds; STOP -> RESUMING returns the write end of a pipe a reader thread drains.
 * Stream format (little-endian), opaque to devmig:
 *   header  "VDBL" u32 version=1 u64 state_size                      16 bytes
 *   record  u64 offset u32 length u32 fnv1a(bytes) + length bytes    (the full state, or a dirty range)
 *   end     u64 ~0     u32 0      u32 fnv1a(whole state)             16 bytes, then EOF
 * From STOP a save is header + one full record + end: state_size + 48 bytes (= MIG_DATA_SIZE).
 * PRE_COPY sends header + full record (the initial bytes) and then nothing until more is asked for:
 * with dirty=N the running device rewrites N bytes right after that snapshot; the dirty record is
 * queued when VFIO_MIG_GET_PRECOPY_INFO is asked with the initial bytes consumed (as mlx5 does), or
 * at PRE_COPY -> STOP_COPY, which then adds the end record. RESUMING -> STOP drains what was written
 * and validates it (magic, size, records in range, every byte covered, checksums, nothing after the
 * end): short, long or corrupt fails the SET with EINVAL, the state stays RESUMING (or ERROR with
 * resume_error=1), and the device keeps its old state bytes.
 * A pipe cannot end and go on, so PRE_COPY's temporary end of data is only emulated when the library
 * is LD_PRELOADed (its read() answers 0 there, as mtty does, or ENOMSG with precopy_enomsg=1); loaded through koffi, such a read blocks until
 * the device queues more. Likewise a read after the session ended returns ENODEV only when preloaded.
 *
 * Configuration: "key=value" settings separated by spaces or ';'.
 *   flags=7 | flags=STOP_COPY+P2P+PRE_COPY   migration flags (default 7)
 *   nomig=1        no migration support: the migration features answer ENOTTY
 *   size=65536     state bytes          seed=1      content seed
 *   dirty=0        bytes the device rewrites after the PRE_COPY snapshot
 *   fail=FROM>TO:ERRNO[:ERROR]   that driver arc fails with ERRNO (name or number), into ERROR if asked
 *   resume_error=1 a refused RESUMING -> STOP leaves the device in ERROR
 *   precopy_enomsg=1  PRE_COPY's temporary end of data reads ENOMSG (as mlx5) instead of 0 (as mtty)
 *   not_viable=1   groups opened afterwards are not viable (SET_CONTAINER: EBUSY)
 *   root=/path     where the fake /dev lives          reset   back to the defaults
 * Sources, later ones winning, read at each open of a device or group: the defaults, the environment
 * (VFIO_DOUBLE_CONFIG, then VFIO_DOUBLE_<KEY> for each key), then vfio_double_configure() calls.
 * Exported for tests: vfio_double_configure, vfio_double_device_configure, vfio_double_state_digest
 * (vfio_double_digest), vfio_double_arcs, vfio_double_next_state, vfio_double_fake_fds,
 * vfio_double_bad_closes, vfio_double_last_error.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/vfio.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the machine's header (6.1) may lack; values from the kernel's include/uapi/linux/vfio.h. */
#define MIGRATION_PRE_COPY (1u << 2)
#define FEATURE_MIG_DATA_SIZE 9
#define IOCTL_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define IOCTL_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)
struct bind_iommufd { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct precopy_info { uint32_t argsz, flags; uint64_t initial_bytes, dirty_bytes; };

enum { S_ERROR, S_STOP, S_RUNNING, S_STOP_COPY, S_RESUMING, S_RUNNING_P2P, S_PRE_COPY, S_PRE_COPY_P2P, NSTATES };
static const char *const state_names[NSTATES] = {
  "ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P",
};
#define HEADER_LEN 16
#define RECORD_LEN 16
#define END_OFFSET UINT64_MAX
#define MAXFD 8192
#define MAX_SETTINGS 4096

/* ------------------------------------------------------------------ real libc, lock, errors */

static int (*real_open)(const char *, int, ...);
static int (*real_close)(int);
static int (*real_ioctl)(int, unsigned long, ...);
static ssize_t (*real_read)(int, void *, size_t);
static pthread_once_t once = PTHREAD_ONCE_INIT;
static void bind_real(void) {
  real_open = dlsym(RTLD_NEXT, "open");
  real_close = dlsym(RTLD_NEXT, "close");
  real_ioctl = dlsym(RTLD_NEXT, "ioctl");
  real_read = dlsym(RTLD_NEXT, "read");
}
static void init(void) { pthread_once(&once, bind_real); }

/* One lock for all of the double's state; worker threads drop it around blocking syscalls. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char last_error[512];

static int fail(int e) { errno = e; return -1; }
static int why(int e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return -e;
}

static uint32_t fnv(const uint8_t *p, size_t n) {
  uint32_t h = 2166136261u;
  while (n--) h = (h ^ *p++) * 16777619u;
  return h;
}

/* ------------------------------------------------------------------ configuration */

struct config {
  unsigned flags;
  int nomig, resume_error, not_viable, precopy_enomsg;
  size_t size, dirty;
  uint32_t seed;
  int fail_from, fail_to, fail_errno, fail_into_error;
  char root[256];
};
static char configured[MAX_SETTINGS]; /* what vfio_double_configure() accumulated */

static void defaults(struct config *c) {
  memset(c, 0, sizeof *c);
  c->flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | MIGRATION_PRE_COPY;
  c->size = 65536;
  c->seed = 1;
  c->fail_from = -1;
}

static int state_of(const char *s, size_t n) {
  for (int i = 0; i < NSTATES; i++) if (strlen(state_names[i]) == n && !strncmp(s, state_names[i], n)) return i;
  return -1;
}

static int errno_of(const char *s) {
  if (isdigit((unsigned char)*s)) return atoi(s);
  for (int e = 1; e < 200; e++) {
    const char *n = strerrorname_np(e);
    if (n && !strcmp(n, s)) return e;
  }
  return -1;
}

/* "STOP_COPY+P2P", "STOP_COPY|PRE_COPY" or a number. */
static int parse_flags(const char *v, unsigned *out) {
  if (isdigit((unsigned char)*v)) { *out = strtoul(v, 0, 0); return 0; }
  unsigned f = 0;
  for (const char *p = v; *p;) {
    size_t n = strcspn(p, "+|");
    if (n == 9 && !strncmp(p, "STOP_COPY", 9)) f |= VFIO_MIGRATION_STOP_COPY;
    else if (n == 3 && !strncmp(p, "P2P", 3)) f |= VFIO_MIGRATION_P2P;
    else if (n == 8 && !strncmp(p, "PRE_COPY", 8)) f |= MIGRATION_PRE_COPY;
    else return -1;
    p += n + (p[n] != 0);
  }
  *out = f;
  return 0;
}

/* fail=FROM>TO:ERRNO[:ERROR]; an empty value clears the fault. */
static int parse_fault(const char *v, struct config *c) {
  if (!*v) { c->fail_from = -1; return 0; }
  const char *gt = strchr(v, '>'), *colon = gt ? strchr(gt, ':') : 0;
  if (!gt || !colon) return -1;
  const char *second = strchr(colon + 1, ':');
  char err[32] = "";
  size_t en = second ? (size_t)(second - colon - 1) : strlen(colon + 1);
  if (en >= sizeof err) return -1;
  memcpy(err, colon + 1, en);
  int from = state_of(v, gt - v), to = state_of(gt + 1, colon - gt - 1), e = errno_of(err);
  int into_error = second && !strcmp(second + 1, "ERROR");
  if (from < 0 || to < 0 || e <= 0 || (second && !into_error)) return -1;
  c->fail_from = from; c->fail_to = to; c->fail_errno = e; c->fail_into_error = into_error;
  return 0;
}

static int apply_setting(struct config *c, const char *key, const char *v) {
  char *end;
  if (!strcmp(key, "reset")) { defaults(c); return 0; }
  if (!strcmp(key, "flags")) return parse_flags(v, &c->flags);
  if (!strcmp(key, "fail")) return parse_fault(v, c);
  if (!strcmp(key, "root")) {
    if (strlen(v) >= sizeof c->root) return -1;
    strcpy(c->root, v);
    return 0;
  }
  unsigned long long n = strtoull(v, &end, 0);
  if (!*v || *end) return -1;
  if (!strcmp(key, "nomig")) c->nomig = !!n;
  else if (!strcmp(key, "resume_error")) c->resume_error = !!n;
  else if (!strcmp(key, "not_viable")) c->not_viable = !!n;
  else if (!strcmp(key, "precopy_enomsg")) c->precopy_enomsg = !!n;
  else if (!strcmp(key, "size")) c->size = n;
  else if (!strcmp(key, "seed")) c->seed = (uint32_t)n;
  else if (!strcmp(key, "dirty")) c->dirty = n;
  else return -1;
  return 0;
}

/* Applies "k=v k=v;k=v" to c; on a bad setting records why and returns -1. */
static int apply_settings(struct config *c, const char *settings) {
  char buf[MAX_SETTINGS];
  if (!settings) return 0;
  /* each token is "key=value", or "reset" */
  if (strlen(settings) >= sizeof buf) return why(EINVAL, "settings too long"), -1;
  strcpy(buf, settings);
  for (char *save = 0, *tok = strtok_r(buf, " \t\n;", &save); tok; tok = strtok_r(0, " \t\n;", &save)) {
    char *eq = strchr(tok, '=');
    if (eq) *eq = 0;
    if ((!eq && strcmp(tok, "reset")) || apply_setting(c, tok, eq ? eq + 1 : "")) {
      why(EINVAL, "bad setting \"%s%s%s\"", tok, eq ? "=" : "", eq ? eq + 1 : "");
      return -1;
    }
  }
  return 0;
}

static const char *const env_keys[] = {"flags", "nomig", "size", "seed", "dirty", "fail", "resume_error", "not_viable", "root", "precopy_enomsg"};

/* The configuration in force now: defaults, the environment, then vfio_double_configure(). */
static void current_config(struct config *c) {
  defaults(c);
  apply_settings(c, getenv("VFIO_DOUBLE_CONFIG"));
  for (size_t i = 0; i < sizeof env_keys / sizeof *env_keys; i++) {
    char name[64], upper[32];
    size_t j = 0;
    for (; env_keys[i][j]; j++) upper[j] = toupper((unsigned char)env_keys[i][j]);
    upper[j] = 0;
    snprintf(name, sizeof name, "VFIO_DOUBLE_%s", upper);
    const char *v = getenv(name);
    if (v) apply_setting(c, env_keys[i], v);
  }
  apply_settings(c, configured);
}

/* ------------------------------------------------------------------ the kernel's FSM */

static const uint8_t fsm[NSTATES][NSTATES] = {
  /* transcribed from vfio_from_fsm_table in drivers/vfio/vfio_main.c; [from][to] = next hop */
  [S_STOP] = {[S_STOP] = S_STOP, [S_RUNNING] = S_RUNNING_P2P, [S_PRE_COPY] = S_RUNNING_P2P,
              [S_PRE_COPY_P2P] = S_RUNNING_P2P, [S_STOP_COPY] = S_STOP_COPY, [S_RESUMING] = S_RESUMING,
              [S_RUNNING_P2P] = S_RUNNING_P2P, [S_ERROR] = S_ERROR},
  [S_RUNNING] = {[S_STOP] = S_RUNNING_P2P, [S_RUNNING] = S_RUNNING, [S_PRE_COPY] = S_PRE_COPY,
                 [S_PRE_COPY_P2P] = S_RUNNING_P2P, [S_STOP_COPY] = S_RUNNING_P2P, [S_RESUMING] = S_RUNNING_P2P,
                 [S_RUNNING_P2P] = S_RUNNING_P2P, [S_ERROR] = S_ERROR},
  [S_PRE_COPY] = {[S_STOP] = S_RUNNING, [S_RUNNING] = S_RUNNING, [S_PRE_COPY] = S_PRE_COPY,
                  [S_PRE_COPY_P2P] = S_PRE_COPY_P2P, [S_STOP_COPY] = S_PRE_COPY_P2P, [S_RESUMING] = S_RUNNING,
                  [S_RUNNING_P2P] = S_RUNNING, [S_ERROR] = S_ERROR},
  [S_PRE_COPY_P2P] = {[S_STOP] = S_RUNNING_P2P, [S_RUNNING] = S_RUNNING_P2P, [S_PRE_COPY] = S_PRE_COPY,
                      [S_PRE_COPY_P2P] = S_PRE_COPY_P2P, [S_STOP_COPY] = S_STOP_COPY,
                      [S_RESUMING] = S_RUNNING_P2P, [S_RUNNING_P2P] = S_RUNNING_P2P, [S_ERROR] = S_ERROR},
  [S_STOP_COPY] = {[S_STOP] = S_STOP, [S_RUNNING] = S_STOP, [S_PRE_COPY] = S_ERROR, [S_PRE_COPY_P2P] = S_ERROR,
                   [S_STOP_COPY] = S_STOP_COPY, [S_RESUMING] = S_STOP, [S_RUNNING_P2P] = S_STOP, [S_ERROR] = S_ERROR},
  [S_RESUMING] = {[S_STOP] = S_STOP, [S_RUNNING] = S_STOP, [S_PRE_COPY] = S_STOP, [S_PRE_COPY_P2P] = S_STOP,
                  [S_STOP_COPY] = S_STOP, [S_RESUMING] = S_RESUMING, [S_RUNNING_P2P] = S_STOP, [S_ERROR] = S_ERROR},
  [S_RUNNING_P2P] = {[S_STOP] = S_STOP, [S_RUNNING] = S_RUNNING, [S_PRE_COPY] = S_RUNNING,
                     [S_PRE_COPY_P2P] = S_PRE_COPY_P2P, [S_STOP_COPY] = S_STOP, [S_RESUMING] = S_STOP,
                     [S_RUNNING_P2P] = S_RUNNING_P2P, [S_ERROR] = S_ERROR},
  [S_ERROR] = {S_ERROR, S_ERROR, S_ERROR, S_ERROR, S_ERROR, S_ERROR, S_ERROR, S_ERROR},
};

static unsigned state_flags(int s) {
  static const unsigned need[NSTATES] = {
    [S_ERROR] = ~0u, [S_STOP] = VFIO_MIGRATION_STOP_COPY, [S_RUNNING] = VFIO_MIGRATION_STOP_COPY,
    [S_STOP_COPY] = VFIO_MIGRATION_STOP_COPY, [S_RESUMING] = VFIO_MIGRATION_STOP_COPY,
    [S_RUNNING_P2P] = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
    [S_PRE_COPY] = VFIO_MIGRATION_STOP_COPY | MIGRATION_PRE_COPY,
    [S_PRE_COPY_P2P] = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | MIGRATION_PRE_COPY,
  };
  return need[s];
}
static int supports(int s, unsigned flags) { return (state_flags(s) & flags) == state_flags(s); }

/* vfio_mig_get_next_state(), except that reaching ERROR refuses instead of looping forever. */
static int next_state(unsigned flags, int cur, int target) {
  if (cur < 0 || cur >= NSTATES || !supports(cur, flags)) return -1;
  if (target < 0 || target >= NSTATES || !supports(target, flags)) return -1;
  int next = fsm[cur][target];
  while (next != S_ERROR && !supports(next, flags)) next = fsm[next][target];
  return next == S_ERROR ? -1 : next;
}

/* The arcs a driver implements for its flags (the comment above vfio_from_fsm_table). */
static int implemented(int from, int to, unsigned flags) {
  int p2p = !!(flags & VFIO_MIGRATION_P2P), pre = !!(flags & MIGRATION_PRE_COPY);
#define ARC(a, b) (from == (a) && to == (b))
  if (ARC(S_RESUMING, S_STOP) || ARC(S_STOP, S_RESUMING) || ARC(S_STOP, S_STOP_COPY) || ARC(S_STOP_COPY, S_STOP)) return 1;
  if (p2p && (ARC(S_RUNNING, S_RUNNING_P2P) || ARC(S_RUNNING_P2P, S_RUNNING) || ARC(S_RUNNING_P2P, S_STOP) ||
              ARC(S_STOP, S_RUNNING_P2P))) return 1;
  if (!p2p && (ARC(S_RUNNING, S_STOP) || ARC(S_STOP, S_RUNNING))) return 1;
  if (pre && (ARC(S_RUNNING, S_PRE_COPY) || ARC(S_PRE_COPY, S_RUNNING))) return 1;
  if (pre && !p2p && ARC(S_PRE_COPY, S_STOP_COPY)) return 1;
  if (pre && p2p && (ARC(S_PRE_COPY, S_PRE_COPY_P2P) || ARC(S_PRE_COPY_P2P, S_PRE_COPY) ||
                     ARC(S_PRE_COPY_P2P, S_RUNNING_P2P) || ARC(S_PRE_COPY_P2P, S_STOP_COPY) ||
                     ARC(S_RUNNING_P2P, S_PRE_COPY_P2P))) return 1;
#undef ARC
  return 0;
}

static int saving(int s) { return s == S_PRE_COPY || s == S_PRE_COPY_P2P || s == S_STOP_COPY; }

/* ------------------------------------------------------------------ fd table */

enum kind { K_NONE, K_CONTAINER, K_GROUP, K_IOMMU, K_DEVICE, K_SAVE };
struct entry { enum kind kind; dev_t dev; ino_t ino; void *obj; };
static struct entry table[MAXFD];
static int fake_fds; /* container, group, iommu and device fds open now */

struct chunk { struct chunk *next; size_t len, off; uint8_t data[]; };
struct device;
struct save {
  struct device *dev;        /* NULL once the device let go of the session */
  int in_table;              /* table[rd] still points here */
  int rd, wr, cancel;        /* rd: the user's data_fd; wr: the writer's end; cancel: eventfd */
  pthread_t thread;
  pthread_cond_t cv;
  struct chunk *head, *tail; /* queued, not yet in the pipe */
  uint64_t queued, written, initial_len;
  size_t dirty_pending;      /* bytes rewritten since the last record of them */
  int final, disabled, writer_done;
  int writing;               /* the writer is between its write() and counting it in `written` */
};
struct resume {
  int rd, cancel;
  pthread_t thread;
  uint8_t *got;
  size_t len, cap;
};
struct group { int viable, container; };
struct container { int groups, iommu; };
struct iommu { int unused; };
struct device {
  int fd, cdev, bound;
  char name[256];
  struct config cfg;
  int state;
  uint8_t *data;
  struct save *save;
  struct resume *resume;
  char arcs[8192];
};

static int entry_live(int fd) {
  if (fd < 0 || fd >= MAXFD || table[fd].kind == K_NONE) return 0;
  struct stat st;
  /* An fd closed behind our back (by the real libc) and reused is not ours any more. */
  return fstat(fd, &st) == 0 && st.st_dev == table[fd].dev && st.st_ino == table[fd].ino;
}

static void forget(int fd);
static void *lookup(int fd, enum kind k) {
  if (fd < 0 || fd >= MAXFD || table[fd].kind == K_NONE) return 0;
  if (!entry_live(fd)) { forget(fd); return 0; }
  return table[fd].kind == k ? table[fd].obj : 0;
}

static int remember(int fd, enum kind k, void *obj) {
  struct stat st;
  if (fd >= MAXFD || fstat(fd, &st)) return -1;
  if (table[fd].kind != K_NONE) forget(fd);
  table[fd] = (struct entry){k, st.st_dev, st.st_ino, obj};
  if (k != K_SAVE) fake_fds++;
  return 0;
}

/* A fake fd: a memfd, so each has its own inode and survives as an ordinary fd for the real libc. */
static int fake_fd(enum kind k, void *obj) {
  int fd = memfd_create("vfio-double", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (remember(fd, k, obj)) { real_close(fd); return fail(EMFILE); }
  return fd;
}

/* ------------------------------------------------------------------ threads */

static void join_unlocked(pthread_t t) {
  pthread_mutex_unlock(&mu);
  pthread_join(t, 0);
  pthread_mutex_lock(&mu);
}

static void block_sigpipe(void) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &s, 0); /* a closed reader must give EPIPE, not kill the process */
}

/* Waits until fd is ready for `events` or cancel fires; 0 when ready, -1 when cancelled or the
 * other end is gone. */
static int wait_ready(int fd, short events, int cancel) {
  struct pollfd p[2] = {{fd, events, 0}, {cancel, POLLIN, 0}};
  for (;;) {
    int n = poll(p, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || p[1].revents) return -1;
    if (p[0].revents & events) return 0;
    if (p[0].revents) return -1;
  }
}

/* ------------------------------------------------------------------ save sessions */

static void free_chunks(struct save *s) {
  for (struct chunk *c = s->head, *n; c; c = n) { n = c->next; free(c); }
  s->head = s->tail = 0;
}

static void save_free_if_unused(struct save *s) {
  if (s->dev || s->in_table) return;
  free_chunks(s);
  real_close(s->cancel);
  pthread_cond_destroy(&s->cv);
  free(s);
}

static void queue_bytes(struct save *s, const void *a, size_t alen, const void *b, size_t blen) {
  struct chunk *c = malloc(sizeof *c + alen + blen);
  c->next = 0; c->len = alen + blen; c->off = 0;
  memcpy(c->data, a, alen);
  if (blen) memcpy(c->data + alen, b, blen);
  if (s->tail) s->tail->next = c; else s->head = c;
  s->tail = c;
  s->queued += c->len;
  pthread_cond_broadcast(&s->cv);
}

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static void queue_header(struct save *s, uint64_t size) {
  uint8_t h[HEADER_LEN] = {'V', 'D', 'B', 'L'};
  put32(h + 4, 1);
  put64(h + 8, size);
  queue_bytes(s, h, sizeof h, 0, 0);
}

static void queue_record(struct save *s, const uint8_t *data, uint64_t off, uint32_t len) {
  uint8_t r[RECORD_LEN];
  put64(r, off);
  put32(r + 8, len);
  put32(r + 12, fnv(data + off, len));
  queue_bytes(s, r, sizeof r, data + off, len);
}

static void queue_end(struct save *s, const uint8_t *data, size_t size) {
  uint8_t r[RECORD_LEN];
  put64(r, END_OFFSET);
  put32(r + 8, 0);
  put32(r + 12, fnv(data, size));
  queue_bytes(s, r, sizeof r, 0, 0);
  s->final = 1;
}

/* The writer moves queued chunks into the pipe; it closes its end (EOF) after the end record. */
static void *writer_main(void *arg) {
  struct save *s = arg;
  block_sigpipe();
  pthread_mutex_lock(&mu);
  for (;;) {
    while (!s->disabled && !s->head && !s->final) pthread_cond_wait(&s->cv, &mu);
    if (s->disabled || !s->head) break;
    struct chunk *c = s->head; /* chunks never move: the main thread only appends */
    pthread_mutex_unlock(&mu);
    int ready = wait_ready(s->wr, POLLOUT, s->cancel) == 0;
    /* Bytes leave the chunk and enter the pipe in one write(), counted just after: in between, a
       reader may already have taken them from the pipe, and PRECOPY_INFO would count them twice
       (still queued, no longer in the pipe). It waits for `writing` to drop; the pipe is
       non-blocking, so that is never long. */
    pthread_mutex_lock(&mu);
    s->writing = 1;
    pthread_mutex_unlock(&mu);
    ssize_t w = ready ? write(s->wr, c->data + c->off, c->len - c->off) : -1;
    int e = errno;
    pthread_mutex_lock(&mu);
    s->writing = 0;
    pthread_cond_broadcast(&s->cv);
    if (!ready || (w < 0 && e != EAGAIN && e != EINTR)) break; /* cancelled, or the reader is gone */
    if (w < 0) continue;
    c->off += w;
    s->written += w;
    if (c->off == c->len) { s->head = c->next; if (!s->head) s->tail = 0; free(c); }
  }
  real_close(s->wr);
  s->writer_done = 1;
  pthread_mutex_unlock(&mu);
  return 0;
}

static int save_open(struct device *d) {
  int p[2];
  if (pipe2(p, O_CLOEXEC)) return -errno;
  struct save *s = calloc(1, sizeof *s);
  s->dev = d; s->rd = p[0]; s->wr = p[1];
  s->cancel = eventfd(0, EFD_CLOEXEC);
  pthread_cond_init(&s->cv, 0);
  fcntl(s->wr, F_SETFL, O_NONBLOCK); /* the writer polls, so a cancel never waits on a full pipe */
  s->in_table = remember(s->rd, K_SAVE, s) == 0;
  pthread_create(&s->thread, 0, writer_main, s);
  d->save = s;
  return s->rd;
}

/* Ends the session (leaving the saving group, ERROR, reset, close): the writer stops. */
static void save_end(struct device *d) {
  struct save *s = d->save;
  if (!s) return;
  s->disabled = 1;
  pthread_cond_broadcast(&s->cv);
  eventfd_write(s->cancel, 1);
  join_unlocked(s->thread);
  free_chunks(s);
  d->save = 0;
  s->dev = 0;
  save_free_if_unused(s); /* kept while the user's data_fd is open: its reads then fail ENODEV */
}

/* The running device rewrites `dirty` bytes right after the PRE_COPY snapshot. */
static void dirty_the_state(struct device *d) {
  size_t n = d->cfg.dirty < d->cfg.size ? d->cfg.dirty : d->cfg.size;
  uint32_t x = d->cfg.seed * 2246822519u + 0x9e3779b9u;
  for (size_t i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; d->data[i] ^= (uint8_t)(x | 1); }
  if (d->save) d->save->dirty_pending = n;
}

static int start_stop_copy(struct device *d, int *data_fd) {
  if ((*data_fd = save_open(d)) < 0) return *data_fd;
  queue_header(d->save, d->cfg.size);
  queue_record(d->save, d->data, 0, d->cfg.size);
  queue_end(d->save, d->data, d->cfg.size);
  return 0;
}

static int start_pre_copy(struct device *d, int *data_fd) {
  if ((*data_fd = save_open(d)) < 0) return *data_fd;
  queue_header(d->save, d->cfg.size);
  queue_record(d->save, d->data, 0, d->cfg.size);
  d->save->initial_len = d->save->queued;
  dirty_the_state(d);
  return 0;
}

static void queue_dirty(struct save *s) {
  if (!s->dirty_pending) return;
  queue_record(s, s->dev->data, 0, s->dirty_pending);
  s->dirty_pending = 0;
}

/* PRE_COPY(_P2P) -> STOP_COPY: what is still dirty, then the end record, on the same data_fd. */
static void finish_pre_copy(struct device *d) {
  queue_dirty(d->save);
  queue_end(d->save, d->data, d->cfg.size);
}

static uint64_t unread_bytes(struct save *s) {
  int in_pipe = 0;
  if (real_ioctl(s->rd, FIONREAD, &in_pipe)) in_pipe = 0;
  return s->queued - s->written + (uint64_t)in_pipe;
}

/* ------------------------------------------------------------------ resume sessions */

static void resume_append(struct resume *r, const uint8_t *p, size_t n) {
  pthread_mutex_lock(&mu);
  if (r->len + n > r->cap) {
    r->cap = (r->len + n) * 2;
    r->got = realloc(r->got, r->cap);
  }
  memcpy(r->got + r->len, p, n);
  r->len += n;
  pthread_mutex_unlock(&mu);
}

/* Drains everything available now; 1 at EOF. */
static int resume_drain(struct resume *r, uint8_t *buf, size_t cap) {
  for (;;) {
    ssize_t n = real_read(r->rd, buf, cap);
    if (n > 0) { resume_append(r, buf, n); continue; }
    if (n == 0) return 1;
    if (errno == EINTR) continue;
    return 0;
  }
}

/* The reader collects what is written; on cancel it takes what is already in the pipe and stops. */
static void *reader_main(void *arg) {
  struct resume *r = arg;
  uint8_t *buf = malloc(1 << 16);
  for (;;) {
    int cancelled = wait_ready(r->rd, POLLIN, r->cancel);
    if (resume_drain(r, buf, 1 << 16) || cancelled) break;
  }
  free(buf);
  return 0;
}

static int resume_open(struct device *d, int *data_fd) {
  int p[2];
  if (pipe2(p, O_CLOEXEC)) return -errno;
  struct resume *r = calloc(1, sizeof *r);
  r->rd = p[0];
  r->cancel = eventfd(0, EFD_CLOEXEC);
  fcntl(r->rd, F_SETFL, O_NONBLOCK);
  pthread_create(&r->thread, 0, reader_main, r);
  d->resume = r;
  *data_fd = p[1];
  return 0;
}

/* Stops the reader; everything written before this call has been collected. */
static void resume_stop(struct resume *r) {
  if (r->cancel < 0) return;
  eventfd_write(r->cancel, 1);
  join_unlocked(r->thread);
  real_close(r->rd);
  real_close(r->cancel);
  r->cancel = -1;
}

static void resume_end(struct device *d) {
  struct resume *r = d->resume;
  if (!r) return;
  resume_stop(r);
  free(r->got);
  free(r);
  d->resume = 0;
}

static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* Rebuilds the state from a stream into `out`; 0, or -EINVAL with last_error saying why. */
static int parse_stream(const uint8_t *p, size_t len, size_t size, uint8_t *out, uint8_t *covered) {
  if (len < HEADER_LEN) return why(EINVAL, "stream is short: %zu bytes, no header", len);
  if (memcmp(p, "VDBL", 4) || get32(p + 4) != 1) return why(EINVAL, "stream is corrupt: bad header");
  if (get64(p + 8) != size) return why(EINVAL, "stream is for a %llu-byte state, this device has %zu",
                                       (unsigned long long)get64(p + 8), size);
  size_t at = HEADER_LEN, seen = 0;
  for (;;) {
    if (len - at < RECORD_LEN) return why(EINVAL, "stream is short: it ends at byte %zu inside a record header", len);
    uint64_t off = get64(p + at);
    uint32_t n = get32(p + at + 8), sum = get32(p + at + 12);
    at += RECORD_LEN;
    if (off == END_OFFSET) {
      if (seen != size) return why(EINVAL, "stream is short: %zu of %zu state bytes sent", seen, size);
      if (sum != fnv(out, size)) return why(EINVAL, "stream is corrupt: the state checksum does not match");
      if (at != len) return why(EINVAL, "stream is long: %zu bytes after its end", len - at);
      return 0;
    }
    if (off > size || n > size - off) return why(EINVAL, "stream is corrupt: a record lies outside the state");
    if (len - at < n) return why(EINVAL, "stream is short: a record wants %u bytes, %zu remain", n, len - at);
    if (fnv(p + at, n) != sum) return why(EINVAL, "stream is corrupt: record at offset %llu fails its checksum",
                                          (unsigned long long)off);
    memcpy(out + off, p + at, n);
    for (uint32_t i = 0; i < n; i++) seen += !covered[off + i], covered[off + i] = 1;
    at += n;
  }
}

/* RESUMING -> STOP: the driver's final validity check, then the device adopts the state. */
static int commit(struct device *d) {
  struct resume *r = d->resume;
  if (!r) return why(EINVAL, "no resume session");
  resume_stop(r);
  uint8_t *out = malloc(d->cfg.size ? d->cfg.size : 1), *covered = calloc(1, d->cfg.size ? d->cfg.size : 1);
  int ret = parse_stream(r->got, r->len, d->cfg.size, out, covered);
  if (!ret) memcpy(d->data, out, d->cfg.size);
  free(out);
  free(covered);
  return ret;
}

/* ------------------------------------------------------------------ devices */

static void seed_state(struct device *d) {
  uint32_t x = d->cfg.seed * 2654435761u + 1;
  for (size_t i = 0; i < d->cfg.size; i++) { x ^= x << 13; x ^= x >> 17; x ^= x << 5; d->data[i] = (uint8_t)x; }
}

static int device_open(const char *name, int cdev) {
  struct device *d = calloc(1, sizeof *d);
  current_config(&d->cfg);
  snprintf(d->name, sizeof d->name, "%s", name);
  d->cdev = cdev;
  d->bound = !cdev; /* a group's device fd is usable at once; a cdev needs BIND_IOMMUFD */
  d->state = S_RUNNING;
  d->data = malloc(d->cfg.size ? d->cfg.size : 1);
  seed_state(d);
  int fd = d->fd = fake_fd(K_DEVICE, d);
  if (fd < 0) { free(d->data); free(d); }
  return fd;
}

static void end_sessions(struct device *d) {
  save_end(d);
  resume_end(d);
}

static void device_free(struct device *d) {
  end_sessions(d);
  free(d->data);
  free(d);
}

static void log_arc(struct device *d, int from, int to, int err) {
  size_t n = strlen(d->arcs);
  snprintf(d->arcs + n, sizeof d->arcs - n, "%s%s>%s%s%s", n ? "," : "", state_names[from], state_names[to],
           err ? "!" : "", err ? strerrorname_np(err) : "");
}

static void enter_error(struct device *d) {
  end_sessions(d);
  d->state = S_ERROR;
}

/* What one driver arc does to the data sessions: 0 (with *data_fd set when it opens one) or -errno. */
static int arc_effects(struct device *d, int from, int to, int *data_fd) {
  if (from == S_STOP && to == S_STOP_COPY) return start_stop_copy(d, data_fd);
  if ((from == S_RUNNING && to == S_PRE_COPY) || (from == S_RUNNING_P2P && to == S_PRE_COPY_P2P)) return start_pre_copy(d, data_fd);
  if (saving(from) && to == S_STOP_COPY) { finish_pre_copy(d); return 0; }
  if (saving(from) && !saving(to)) save_end(d); /* "The ... arc will terminate a data transfer session" */
  if (from == S_STOP && to == S_RESUMING) return resume_open(d, data_fd);
  if (from == S_RESUMING) {
    int ret = commit(d);
    if (ret && d->cfg.resume_error) enter_error(d);
    if (ret) return ret;
    resume_end(d);
  }
  return 0;
}

/* One driver arc: the driver's step function. */
static int step(struct device *d, int to, int *data_fd) {
  int from = d->state, ret;
  if (!implemented(from, to, d->cfg.flags)) {
    ret = why(EINVAL, "driver has no arc %s -> %s for flags %u", state_names[from], state_names[to], d->cfg.flags);
  } else if (from == d->cfg.fail_from && to == d->cfg.fail_to) {
    ret = why(d->cfg.fail_errno, "injected fault on %s -> %s", state_names[from], state_names[to]);
    if (d->cfg.fail_into_error) enter_error(d);
  } else if ((ret = arc_effects(d, from, to, data_fd)) == 0) {
    d->state = to;
  }
  log_arc(d, from, to, -ret);
  return ret;
}

/* migration_set_state(): walks the table one driver arc at a time, as drivers do. */
static int set_state(struct device *d, unsigned target, int *data_fd) {
  *data_fd = -1;
  while ((unsigned)d->state != target) {
    int next = next_state(d->cfg.flags, d->state, target);
    if (next < 0) return why(EINVAL, "no path %s -> %s for flags %u", state_names[d->state],
                             target < NSTATES ? state_names[target] : "?", d->cfg.flags);
    int fd = -1, ret = step(d, next, &fd);
    if (ret) return ret;
    if (fd >= 0 && next != (int)target) { /* mlx5: WARN_ON(res && new_state != state) */
      end_sessions(d);
      return why(EINVAL, "a data_fd opened in the middle of a combination transition");
    }
    if (fd >= 0) *data_fd = fd;
  }
  return 0;
}

/* ------------------------------------------------------------------ ioctls */

/* vfio_check_feature(): 1 to go on, 0 for a successful PROBE, or -errno. */
static int check_feature(uint32_t flags, size_t argsz, uint32_t ops, size_t minsz) {
  if ((flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET)) & ~ops) return -EINVAL;
  if (flags & VFIO_DEVICE_FEATURE_PROBE) return 0;
  if (!(flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET))) return -EINVAL;
  if (argsz < minsz) return -EINVAL;
  return 1;
}

static int feature_mig_state(struct device *d, uint32_t flags, void *data, size_t argsz) {
  struct vfio_device_feature_mig_state *m = data;
  int ret = check_feature(flags, argsz, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET, sizeof *m);
  if (ret != 1) return ret;
  if (flags & VFIO_DEVICE_FEATURE_GET) {
    m->device_state = d->state;
    m->data_fd = -1;
    return 0;
  }
  int fd = -1;
  ret = set_state(d, m->device_state, &fd);
  m->data_fd = ret ? -1 : fd;
  return ret;
}

static int feature_u64(uint32_t flags, void *data, size_t argsz, uint64_t value) {
  int ret = check_feature(flags, argsz, VFIO_DEVICE_FEATURE_GET, 8);
  if (ret == 1) memcpy(data, &value, 8);
  return ret == 1 ? 0 : ret;
}

/* vfio_ioctl_device_feature() and the vfio-pci driver's answer to features it lacks. */
static int device_feature(struct device *d, struct vfio_device_feature *f) {
  const uint32_t known = VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE;
  if (f->argsz < sizeof *f) return -EINVAL;
  if (f->flags & ~known) return -EINVAL;
  if (!(f->flags & VFIO_DEVICE_FEATURE_PROBE) && (f->flags & VFIO_DEVICE_FEATURE_GET) && (f->flags & VFIO_DEVICE_FEATURE_SET)) return -EINVAL;
  size_t argsz = f->argsz - sizeof *f;
  uint32_t op = f->flags & VFIO_DEVICE_FEATURE_MASK;
  int mig = op == VFIO_DEVICE_FEATURE_MIGRATION || op == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE || op == FEATURE_MIG_DATA_SIZE;
  if (!mig) return -ENOTTY;
  if (d->cfg.nomig) return why(ENOTTY, "device has no migration support");
  if (op == VFIO_DEVICE_FEATURE_MIGRATION) return feature_u64(f->flags, f->data, argsz, d->cfg.flags);
  if (op == FEATURE_MIG_DATA_SIZE) return feature_u64(f->flags, f->data, argsz, d->cfg.size + HEADER_LEN + 2 * RECORD_LEN);
  return feature_mig_state(d, f->flags, f->data, argsz);
}

static int bind_iommufd(struct device *d, struct bind_iommufd *b) {
  if (b->argsz < sizeof *b || b->flags || b->iommufd < 0) return -EINVAL;
  if (!d->cdev || d->bound) return -EINVAL; /* only cdev fds, and only once */
  if (b->iommufd >= MAXFD || fcntl(b->iommufd, F_GETFD) < 0) return -EBADF;
  if (!lookup(b->iommufd, K_IOMMU)) return -EBADFD; /* iommufd_ctx_from_fd() on another file */
  d->bound = 1;
  b->out_devid = (uint32_t)d->fd;
  return 0;
}

static int device_reset(struct device *d) {
  end_sessions(d);
  seed_state(d); /* a reset device is back to its power-on state */
  d->state = S_RUNNING;
  return 0;
}

static int device_ioctl(struct device *d, unsigned long req, void *arg) {
  if (!arg && (req == IOCTL_BIND_IOMMUFD || req == VFIO_DEVICE_FEATURE)) return -EFAULT;
  if (req == IOCTL_BIND_IOMMUFD) return bind_iommufd(d, arg);
  if (!d->bound) return -EINVAL; /* vfio_device_fops_unl_ioctl before access is granted */
  if (req == VFIO_DEVICE_FEATURE) return device_feature(d, arg);
  if (req == VFIO_DEVICE_RESET) return device_reset(d);
  return -ENOTTY;
}

static int precopy_info(struct save *s, struct precopy_info *info) {
  if (info->argsz < sizeof *info) return -EINVAL;
  while (s->writing) pthread_cond_wait(&s->cv, &mu);
  if (!s->dev || s->disabled) return -ENODEV;
  if (s->dev->state != S_PRE_COPY && s->dev->state != S_PRE_COPY_P2P) return -EINVAL;
  uint64_t unread = unread_bytes(s), consumed = s->queued - unread;
  uint64_t initial = s->initial_len > consumed ? s->initial_len - consumed : 0;
  info->initial_bytes = initial;
  info->dirty_bytes = unread - initial + (s->dirty_pending ? RECORD_LEN + s->dirty_pending : 0);
  if (!initial) queue_dirty(s); /* as mlx5: with the initial bytes read, asking starts the next round */
  return 0;
}

static int is_uuid(const char *s) {
  if (strlen(s) != 36) return 0;
  for (int i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) { if (s[i] != '-') return 0; }
    else if (!isxdigit((unsigned char)s[i])) return 0;
  }
  return 1;
}

static int container_ioctl(struct container *c, unsigned long req, unsigned long arg) {
  if (req == VFIO_GET_API_VERSION) return VFIO_API_VERSION;
  if (req == VFIO_CHECK_EXTENSION) return arg == VFIO_TYPE1v2_IOMMU || arg == VFIO_TYPE1_IOMMU;
  if (req != VFIO_SET_IOMMU) return -ENOTTY;
  if (!c->groups || c->iommu) return -EINVAL; /* vfio_ioctl_set_iommu: a group first, and only once */
  if (arg != VFIO_TYPE1v2_IOMMU && arg != VFIO_TYPE1_IOMMU) return -EINVAL;
  c->iommu = (int)arg;
  return 0;
}

static int group_ioctl(struct group *g, unsigned long req, void *arg) {
  if (!arg && req != VFIO_GROUP_UNSET_CONTAINER) return -EFAULT;
  if (req == VFIO_GROUP_GET_STATUS) {
    struct vfio_group_status *s = arg;
    if (s->argsz < sizeof *s) return -EINVAL;
    s->flags = (g->viable ? VFIO_GROUP_FLAGS_VIABLE : 0) | (g->container >= 0 ? VFIO_GROUP_FLAGS_CONTAINER_SET : 0);
    return 0;
  }
  if (req == VFIO_GROUP_SET_CONTAINER) {
    int cfd = *(int *)arg;
    struct container *c = lookup(cfd, K_CONTAINER);
    if (g->container >= 0) return -EINVAL;
    if (!c) return fcntl(cfd, F_GETFD) < 0 ? -EBADF : -EINVAL;
    if (!g->viable) return why(EBUSY, "group is not viable: another driver owns DMA of a device in it");
    g->container = cfd;
    c->groups++;
    return 0;
  }
  if (req == VFIO_GROUP_GET_DEVICE_FD) {
    const char *bdf = arg;
    struct container *c = g->container >= 0 ? lookup(g->container, K_CONTAINER) : 0;
    unsigned dom, bus, dev, fn;
    char tail;
    if (!c || !c->iommu) return -EINVAL;
    /* vfio_device_get_from_name(): a device of the group by its name, a PCI address or an mdev's UUID */
    int pci = strlen(bdf) == 12 && sscanf(bdf, "%4x:%2x:%2x.%1x%c", &dom, &bus, &dev, &fn, &tail) == 4;
    if (!pci && !is_uuid(bdf)) return -ENODEV;
    int fd = device_open(bdf, 0);
    return fd < 0 ? -errno : fd;
  }
  return -ENOTTY;
}

#define NOT_OURS INT_MIN
static int fake_ioctl(int fd, unsigned long req, void *arg) {
  void *o;
  if ((o = lookup(fd, K_DEVICE))) return device_ioctl(o, req, arg);
  if ((o = lookup(fd, K_SAVE))) return req != IOCTL_PRECOPY_INFO ? -ENOTTY : arg ? precopy_info(o, arg) : -EFAULT;
  if ((o = lookup(fd, K_CONTAINER))) return container_ioctl(o, req, (unsigned long)arg);
  if ((o = lookup(fd, K_GROUP))) return group_ioctl(o, req, arg);
  if ((o = lookup(fd, K_IOMMU))) return -ENOTTY;
  return NOT_OURS; /* an fd closed behind our back and reused */
}

static int known(int fd) { return fd >= 0 && fd < MAXFD && __atomic_load_n(&table[fd].kind, __ATOMIC_RELAXED) != K_NONE; }

int ioctl(int fd, unsigned long req, ...) {
  init();
  va_list ap;
  va_start(ap, req);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  if (!known(fd)) return real_ioctl(fd, req, arg);
  pthread_mutex_lock(&mu);
  int ret = fake_ioctl(fd, req, arg);
  pthread_mutex_unlock(&mu);
  if (ret == NOT_OURS) return real_ioctl(fd, req, arg);
  return ret < 0 ? fail(-ret) : ret;
}

/* ------------------------------------------------------------------ open, close, read */

static enum kind path_kind(const char *path, const char *root) {
  size_t rl = strlen(root);
  if (strncmp(path, root, rl)) return K_NONE;
  const char *p = path + rl;
  if (!strcmp(p, "/dev/vfio/vfio")) return K_CONTAINER;
  if (!strcmp(p, "/dev/iommu")) return K_IOMMU;
  if (!strncmp(p, "/dev/vfio/devices/vfio", 22) && p[22] && strspn(p + 22, "0123456789") == strlen(p + 22)) return K_DEVICE;
  if (!strncmp(p, "/dev/vfio/", 10) && p[10] && strspn(p + 10, "0123456789") == strlen(p + 10)) return K_GROUP;
  return K_NONE;
}

static int open_fake(const char *path, enum kind k, const struct config *c) {
  if (k == K_DEVICE) return device_open(path, 1);
  if (k == K_GROUP) {
    struct group *g = calloc(1, sizeof *g);
    g->viable = !c->not_viable;
    g->container = -1;
    int fd = fake_fd(K_GROUP, g);
    if (fd < 0) free(g);
    return fd;
  }
  void *obj = k == K_CONTAINER ? calloc(1, sizeof(struct container)) : calloc(1, sizeof(struct iommu));
  int fd = fake_fd(k, obj);
  if (fd < 0) free(obj);
  return fd;
}

int open(const char *path, int flags, ...) {
  init();
  mode_t mode = 0;
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }
  if (!strstr(path, "/dev/")) return real_open(path, flags, mode);
  pthread_mutex_lock(&mu);
  struct config c;
  current_config(&c);
  enum kind k = path_kind(path, c.root);
  int fd = k == K_NONE ? -2 : open_fake(path, k, &c);
  int e = errno;
  pthread_mutex_unlock(&mu);
  if (fd == -2) return real_open(path, flags, mode);
  errno = e;
  return fd;
}

static void forget(int fd) {
  struct entry e = table[fd];
  table[fd].kind = K_NONE;
  if (e.kind != K_SAVE && e.kind != K_NONE) fake_fds--;
  if (e.kind == K_DEVICE) device_free(e.obj);
  else if (e.kind == K_SAVE) { ((struct save *)e.obj)->in_table = 0; save_free_if_unused(e.obj); }
  else if (e.kind != K_NONE) free(e.obj);
}

static int bad_closes; /* close() of an fd that was not open: a double close, which could have closed a reused number */

int close(int fd) {
  init();
  if (known(fd)) {
    pthread_mutex_lock(&mu);
    if (table[fd].kind != K_NONE) forget(fd); /* last close of a device: its state is gone */
    pthread_mutex_unlock(&mu);
  }
  int ret = real_close(fd);
  if (ret < 0 && errno == EBADF) __atomic_add_fetch(&bad_closes, 1, __ATOMIC_RELAXED);
  return ret;
}

/* Only reached when preloaded: the data_fd read() of a driver, for what a pipe cannot say: PRE_COPY's
 * temporary end (0, as mtty; or ENOMSG, as mlx5 and the uAPI's text), and ENODEV after the session. */
ssize_t read(int fd, void *buf, size_t n) {
  init();
  if (known(fd)) {
    int err = 0, eof = 0;
    pthread_mutex_lock(&mu);
    struct save *s = lookup(fd, K_SAVE);
    if (s && (s->disabled || !s->dev)) err = ENODEV;
    else if (s && (s->dev->state == S_PRE_COPY || s->dev->state == S_PRE_COPY_P2P) && !unread_bytes(s)) {
      /* mtty answers 0 at PRE_COPY's temporary end (mtty_save_read); mlx5 answers ENOMSG, as the uAPI asks */
      if (s->dev->cfg.precopy_enomsg) err = ENOMSG; else eof = 1;
    }
    pthread_mutex_unlock(&mu);
    if (err) return fail(err);
    if (eof) return 0;
  }
  return real_read(fd, buf, n);
}

/* ------------------------------------------------------------------ for tests */

/* Keeps the settings for what opens next; "reset" forgets what earlier calls configured. */
static int remember_settings(const char *settings) {
  char buf[MAX_SETTINGS];
  snprintf(buf, sizeof buf, "%s", settings);
  for (char *save = 0, *tok = strtok_r(buf, " \t\n;", &save); tok; tok = strtok_r(0, " \t\n;", &save)) {
    if (!strcmp(tok, "reset")) { configured[0] = 0; continue; }
    if (strlen(configured) + strlen(tok) + 2 > sizeof configured) return why(EINVAL, "too many settings; configure reset first"), -1;
    strcat(configured, " ");
    strcat(configured, tok);
  }
  return 0;
}

int vfio_double_configure(const char *settings) {
  init();
  struct config scratch;
  defaults(&scratch);
  pthread_mutex_lock(&mu);
  int ret = !settings ? (why(EINVAL, "no settings"), -1) : apply_settings(&scratch, settings);
  if (!ret) ret = remember_settings(settings);
  pthread_mutex_unlock(&mu);
  return ret ? fail(EINVAL) : 0;
}

/* Changes an open device: flags, nomig, dirty, fail, resume_error. */
int vfio_double_device_configure(int device_fd, const char *settings) {
  init();
  pthread_mutex_lock(&mu);
  struct device *d = lookup(device_fd, K_DEVICE);
  struct config c = d ? d->cfg : (struct config){0};
  int ret = !d ? (why(EBADF, "fd %d is not a device of the double", device_fd), -1) : apply_settings(&c, settings);
  if (!ret && (c.size != d->cfg.size || c.seed != d->cfg.seed)) ret = (why(EINVAL, "size and seed are fixed at open"), -1);
  if (!ret) d->cfg = c;
  pthread_mutex_unlock(&mu);
  return ret ? fail(d ? EINVAL : EBADF) : 0;
}

/* FNV-1a of the device's state bytes: equal digests mean a transfer moved the state exactly. */
uint32_t vfio_double_state_digest(int device_fd) {
  init();
  pthread_mutex_lock(&mu);
  struct device *d = lookup(device_fd, K_DEVICE);
  uint32_t h = d ? fnv(d->data, d->cfg.size) : 0;
  pthread_mutex_unlock(&mu);
  return h;
}
uint32_t vfio_double_digest(int device_fd) { return vfio_double_state_digest(device_fd); }

/* The driver arcs the device walked since the last call, "RUNNING>STOP,STOP>STOP_COPY!EIO". */
const char *vfio_double_arcs(int device_fd) {
  static __thread char out[sizeof ((struct device *)0)->arcs];
  init();
  pthread_mutex_lock(&mu);
  struct device *d = lookup(device_fd, K_DEVICE);
  snprintf(out, sizeof out, "%s", d ? d->arcs : "");
  if (d) d->arcs[0] = 0;
  pthread_mutex_unlock(&mu);
  return out;
}

/* The double's own next-state walk: one hop from `from` toward `to`, or -1 where it refuses. */
int vfio_double_next_state(unsigned flags, int from, int to) { return next_state(flags, from, to); }

int vfio_double_fake_fds(void) {
  pthread_mutex_lock(&mu);
  int n = fake_fds;
  pthread_mutex_unlock(&mu);
  return n;
}

/* How many close() calls through the double found the fd not open. */
int vfio_double_bad_closes(void) { return __atomic_load_n(&bad_closes, __ATOMIC_RELAXED); }

const char *vfio_double_last_error(void) { return last_error; }
