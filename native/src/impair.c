/* impair.c - link impairment without netem: an element between two AF_PACKET sockets (the two
 * veths that replace one lab link), one pipe per direction, batched (recvmmsg/sendmmsg), no
 * Python per frame.
 *
 * A pipe decides everything at arrival (loss, duplicate, corrupt, the frame's delay = delay +
 * uniform jitter, or "send now" for a reordered frame) and parks the frame in a timing wheel of
 * 2^16 slots of 65.536 us (span 4.29 s > IE_IMP_MAX_DELAY_NS), with a bitmap of non-empty slots
 * so the next deadline is found by a few word scans.  Due frames move to a ready FIFO that a
 * token bucket drains at the configured rate.  The pipe takes timestamps as arguments: the I/O
 * part below gives it CLOCK_MONOTONIC, native/tests/impair_tool.c a fake clock. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "impair.h"
#include "internal.h"
#include "loop_io.h"

#define TICK_SHIFT 16
#define NSLOTS (1u << 16)
#define SLOT_MASK (NSLOTS - 1)
#define PPM 1000000u
#define NS 1000000000LL
#define ETH_HL 14
#define DT_CAP_NS 50000000ULL /* refill at most 50 ms at once: credit stays far from INT64_MAX */

struct ie_imp_pipe {
    ie_imp_dir_cfg cfg;
    ie_imp_stats st;
    uint32_t max_frame, pool, limit;
    uint8_t *arena;          /* pool * max_frame bytes */
    uint32_t *next, *len;    /* per frame slot: list link, length */
    uint32_t *freelist, nfree;
    uint32_t *head, *tail;   /* wheel slots: FIFO lists */
    uint64_t *bits;          /* non-empty wheel slots */
    uint64_t cur_tick;       /* every tick <= cur_tick has been moved to the ready FIFO */
    int started;
    uint32_t in_wheel, queued;
    uint32_t rq_head, rq_tail;
    int64_t credit;          /* token bucket, bytes * 1e9 */
    uint64_t credit_ns;
    uint64_t rng;
};

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static int chance(ie_imp_pipe *p, uint32_t ppm)
{
    if (ppm == 0)
        return 0;
    return (uint32_t)(((splitmix(&p->rng) >> 32) * PPM) >> 32) < ppm;
}

ie_imp_pipe *ie_imp_pipe_new(uint32_t max_frame, uint32_t pool, uint64_t seed)
{
    ie_imp_pipe *p;
    uint32_t i;

    if (max_frame < ETH_HL || max_frame > 65535 || pool == 0 || pool > (1u << 20))
        return NULL;
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->max_frame = max_frame;
    p->pool = p->limit = pool;
    p->arena = malloc((size_t)pool * max_frame);
    p->next = malloc(pool * sizeof(uint32_t));
    p->len = malloc(pool * sizeof(uint32_t));
    p->freelist = malloc(pool * sizeof(uint32_t));
    p->head = malloc(NSLOTS * sizeof(uint32_t));
    p->tail = malloc(NSLOTS * sizeof(uint32_t));
    p->bits = calloc(NSLOTS / 64, sizeof(uint64_t));
    if (!p->arena || !p->next || !p->len || !p->freelist || !p->head || !p->tail || !p->bits) {
        ie_imp_pipe_free(p);
        return NULL;
    }
    for (i = 0; i < pool; i++)
        p->freelist[i] = pool - 1 - i;
    p->nfree = pool;
    for (i = 0; i < NSLOTS; i++)
        p->head[i] = p->tail[i] = IE_IMP_NONE;
    p->rq_head = p->rq_tail = IE_IMP_NONE;
    p->rng = seed;
    return p;
}

void ie_imp_pipe_free(ie_imp_pipe *p)
{
    if (!p)
        return;
    free(p->arena);
    free(p->next);
    free(p->len);
    free(p->freelist);
    free(p->head);
    free(p->tail);
    free(p->bits);
    free(p);
}

static uint64_t burst_of(const ie_imp_pipe *p)
{
    /* 10 ms at the rate, at least two frames.  The element is a process on a shared box: a wake-up
     * that comes late must not cost rate (credit beyond the burst is lost), and a 1 ms burst lost up
     * to a quarter of a 650 Mbit/s cap to scheduling delays in the lab test.  The long-run rate is
     * the configured one either way; the burst only bounds how much leaves at once after a stall. */
    uint64_t b = p->cfg.rate_bps / 8 / 100;
    return b < 2ULL * p->max_frame ? 2ULL * p->max_frame : b;
}

int ie_imp_pipe_set(ie_imp_pipe *p, const ie_imp_dir_cfg *cfg)
{
    if (cfg->delay_ns > IE_IMP_MAX_DELAY_NS || cfg->jitter_ns > IE_IMP_MAX_DELAY_NS ||
        cfg->delay_ns + cfg->jitter_ns > IE_IMP_MAX_DELAY_NS || cfg->loss_ppm > PPM ||
        cfg->reorder_ppm > PPM || cfg->duplicate_ppm > PPM || cfg->corrupt_ppm > PPM ||
        cfg->rate_bps > 400000000000ULL || cfg->rate_overhead < -65535 || cfg->rate_overhead > 65535)
        return IE_S_EINVAL;
    if (cfg->rate_bps != p->cfg.rate_bps)
        p->credit = 0; /* start the new rate with an empty bucket */
    p->cfg = *cfg;
    p->limit = cfg->limit == 0 || cfg->limit > p->pool ? p->pool : cfg->limit;
    return IE_S_OK;
}

void ie_imp_pipe_get(const ie_imp_pipe *p, ie_imp_dir_cfg *out)
{
    *out = p->cfg;
}

void ie_imp_pipe_stats(const ie_imp_pipe *p, ie_imp_stats *out)
{
    *out = p->st;
    out->queued = p->queued;
}

static void rq_push_back(ie_imp_pipe *p, uint32_t id)
{
    p->next[id] = IE_IMP_NONE;
    if (p->rq_tail == IE_IMP_NONE)
        p->rq_head = id;
    else
        p->next[p->rq_tail] = id;
    p->rq_tail = id;
}

static void rq_push_front(ie_imp_pipe *p, uint32_t id)
{
    p->next[id] = p->rq_head;
    p->rq_head = id;
    if (p->rq_tail == IE_IMP_NONE)
        p->rq_tail = id;
}

/* Move the frames of slot s (all due) to the ready FIFO, in arrival order. */
static void drain_slot(ie_imp_pipe *p, uint32_t s)
{
    uint32_t h = p->head[s], n;

    for (n = 0; h != IE_IMP_NONE; n++) {
        uint32_t nx = p->next[h];
        rq_push_back(p, h);
        h = nx;
    }
    p->in_wheel -= n;
    p->head[s] = p->tail[s] = IE_IMP_NONE;
    p->bits[s >> 6] &= ~(1ULL << (s & 63));
}

/* The first tick in [from, to] whose slot is non-empty, or UINT64_MAX. */
static uint64_t next_busy(const ie_imp_pipe *p, uint64_t from, uint64_t to)
{
    uint64_t t = from;

    while (t <= to) {
        uint32_t s = (uint32_t)(t & SLOT_MASK);
        uint64_t w = p->bits[s >> 6] >> (s & 63);
        if (w == 0) {
            t += 64 - (s & 63);
            continue;
        }
        t += (uint64_t)__builtin_ctzll(w);
        return t <= to ? t : UINT64_MAX;
    }
    return UINT64_MAX;
}

static void advance(ie_imp_pipe *p, uint64_t now_ns)
{
    uint64_t now_tick = now_ns >> TICK_SHIFT, end, t;

    if (!p->started) {
        p->started = 1;
        p->cur_tick = now_tick;
        p->credit_ns = now_ns;
        return;
    }
    if (now_tick <= p->cur_tick)
        return;
    end = now_tick - p->cur_tick >= NSLOTS ? p->cur_tick + NSLOTS : now_tick;
    for (t = p->cur_tick + 1; p->in_wheel && t <= end; t++) {
        t = next_busy(p, t, end);
        if (t == UINT64_MAX)
            break;
        drain_slot(p, (uint32_t)(t & SLOT_MASK));
    }
    p->cur_tick = now_tick;
}

static void enqueue(ie_imp_pipe *p, uint32_t id, uint64_t now_ns)
{
    uint64_t d = p->cfg.delay_ns, tick, j = p->cfg.jitter_ns;
    uint32_t s;

    if (j) {
        uint64_t r = splitmix(&p->rng) % (2 * j + 1); /* uniform in [0, 2j] */
        d = d + r >= j ? d + r - j : 0;
    }
    if (d && chance(p, p->cfg.reorder_ppm)) {
        p->st.reordered++;
        rq_push_front(p, id);
        return;
    }
    /* rounded up: a frame never leaves before its delay, at most one tick (65.5 us) after it */
    tick = (now_ns + d + (1u << TICK_SHIFT) - 1) >> TICK_SHIFT;
    if (d == 0 || tick <= p->cur_tick) {
        rq_push_back(p, id);
        return;
    }
    p->st.delayed++;
    s = (uint32_t)(tick & SLOT_MASK);
    p->next[id] = IE_IMP_NONE;
    if (p->tail[s] == IE_IMP_NONE)
        p->head[s] = id;
    else
        p->next[p->tail[s]] = id;
    p->tail[s] = id;
    p->bits[s >> 6] |= 1ULL << (s & 63);
    p->in_wheel++;
}

int ie_imp_pipe_push(ie_imp_pipe *p, const uint8_t *frame, uint32_t len, uint64_t now_ns)
{
    int copies, i, n = 0;

    p->st.rx++;
    if (len > p->max_frame || len == 0) {
        p->st.dropped_tx++;
        return 0;
    }
    advance(p, now_ns);
    if (chance(p, p->cfg.loss_ppm)) {
        p->st.dropped_loss++;
        return 0;
    }
    copies = 1;
    if (chance(p, p->cfg.duplicate_ppm)) {
        copies = 2;
        p->st.duplicated++;
    }
    for (i = 0; i < copies; i++) {
        uint32_t id;
        uint8_t *d;
        if (p->queued >= p->limit || p->nfree == 0) {
            p->st.dropped_queue++;
            continue;
        }
        id = p->freelist[--p->nfree];
        d = p->arena + (size_t)id * p->max_frame;
        memcpy(d, frame, len);
        p->len[id] = len;
        if (chance(p, p->cfg.corrupt_ppm)) {
            /* after the Ethernet header, so the frame still reaches the peer's IP layer */
            uint64_t r = splitmix(&p->rng);
            uint32_t off = len > ETH_HL ? ETH_HL + (uint32_t)(r % (len - ETH_HL)) : (uint32_t)(r % len);
            d[off] ^= (uint8_t)(1u << ((r >> 32) & 7));
            p->st.corrupted++;
        }
        p->queued++;
        enqueue(p, id, now_ns);
        n++;
    }
    return n;
}

static void refill(ie_imp_pipe *p, uint64_t now_ns)
{
    uint64_t dt, cap;

    if (!p->cfg.rate_bps || now_ns <= p->credit_ns) {
        if (now_ns > p->credit_ns)
            p->credit_ns = now_ns;
        return;
    }
    dt = now_ns - p->credit_ns;
    if (dt > DT_CAP_NS)
        dt = DT_CAP_NS;
    p->credit_ns = now_ns;
    p->credit += (int64_t)(dt * p->cfg.rate_bps / 8);
    cap = burst_of(p) * (uint64_t)NS;
    if (p->credit > (int64_t)cap)
        p->credit = (int64_t)cap;
}

uint32_t ie_imp_pipe_pop(ie_imp_pipe *p, uint64_t now_ns, uint32_t *ids, uint32_t max)
{
    uint32_t n = 0;

    advance(p, now_ns);
    refill(p, now_ns);
    while (n < max && p->rq_head != IE_IMP_NONE) {
        uint32_t id = p->rq_head;
        if (p->cfg.rate_bps) {
            if (p->credit < 0)
                break;
            int64_t cost = (int64_t)p->len[id] + p->cfg.rate_overhead;
            p->credit -= (cost > 1 ? cost : 1) * NS;
        }
        p->rq_head = p->next[id];
        if (p->rq_head == IE_IMP_NONE)
            p->rq_tail = IE_IMP_NONE;
        p->queued--;
        ids[n++] = id;
    }
    return n;
}

uint8_t *ie_imp_pipe_data(ie_imp_pipe *p, uint32_t id, uint32_t *len)
{
    *len = p->len[id];
    return p->arena + (size_t)id * p->max_frame;
}

void ie_imp_pipe_release(ie_imp_pipe *p, uint32_t id, int sent)
{
    if (sent) {
        p->st.passed++;
        p->st.bytes += p->len[id];
    } else {
        p->st.dropped_tx++;
    }
    p->freelist[p->nfree++] = id;
}

uint64_t ie_imp_pipe_next_ns(ie_imp_pipe *p, uint64_t now_ns)
{
    uint64_t t;

    if (p->queued == 0)
        return UINT64_MAX;
    if (p->rq_head != IE_IMP_NONE) {
        refill(p, now_ns);
        if (!p->cfg.rate_bps || p->credit >= 0)
            return now_ns;
        /* credit (bytes * 1e9) * 8 / rate (bit/s) = ns until the bucket is back at 0 */
        return now_ns + ((uint64_t)(-p->credit) * 8 + p->cfg.rate_bps - 1) / p->cfg.rate_bps;
    }
    if (!p->started)
        return now_ns;
    t = next_busy(p, p->cur_tick + 1, p->cur_tick + NSLOTS);
    return t == UINT64_MAX ? UINT64_MAX : t << TICK_SHIFT;
}

/* ---------------------------------------------------------------- the element on two sockets */

struct ie_imp {
    ie_imp_pipe *p[2];       /* [0]: a -> b, [1]: b -> a */
    int fd[2];
    uint32_t max_frame;
    pthread_mutex_t mu;      /* guards the pipes against ie_imp_set/_stats from the control thread */
    atomic_int stop;
    uint8_t *scratch;        /* IE_IMP_MAX_BATCH receive buffers */
    struct mmsghdr msgs[IE_IMP_MAX_BATCH];
    struct iovec iov[IE_IMP_MAX_BATCH];
    uint32_t ids[IE_IMP_MAX_BATCH];
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * (uint64_t)NS + (uint64_t)ts.tv_nsec;
}

int ie_imp_new(int fd_a, int fd_b, uint32_t max_frame, uint32_t pool, uint64_t seed, ie_imp **out)
{
    ie_imp *m;
    int i;

    *out = NULL;
    if (fd_a < 0 || fd_b < 0 || fd_a == fd_b || max_frame < ETH_HL || max_frame > 65535 || pool == 0 ||
        pool > (1u << 20))
        return IE_S_EINVAL;
    if (seed == 0 && getrandom(&seed, sizeof(seed), 0) != (ssize_t)sizeof(seed))
        seed = mono_ns();
    m = calloc(1, sizeof(*m));
    if (!m)
        return IE_S_ENOMEM;
    m->fd[0] = fd_a;
    m->fd[1] = fd_b;
    m->max_frame = max_frame;
    m->p[0] = ie_imp_pipe_new(max_frame, pool, seed);
    m->p[1] = ie_imp_pipe_new(max_frame, pool, seed ^ 0x5DEECE66DULL);
    m->scratch = malloc((size_t)IE_IMP_MAX_BATCH * max_frame);
    if (!m->p[0] || !m->p[1] || !m->scratch || pthread_mutex_init(&m->mu, NULL) != 0) {
        ie_imp_pipe_free(m->p[0]);
        ie_imp_pipe_free(m->p[1]);
        free(m->scratch);
        free(m);
        return IE_S_ENOMEM;
    }
    atomic_init(&m->stop, 0);
    for (i = 0; i < 2; i++) {
        int fl = fcntl(m->fd[i], F_GETFL);
        if (fl >= 0)
            fcntl(m->fd[i], F_SETFL, fl | O_NONBLOCK);
    }
    *out = m;
    return IE_S_OK;
}

void ie_imp_free(ie_imp *m)
{
    if (!m)
        return;
    ie_imp_pipe_free(m->p[0]);
    ie_imp_pipe_free(m->p[1]);
    free(m->scratch);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

int ie_imp_set(ie_imp *m, int dir, const ie_imp_dir_cfg *cfg)
{
    int r;

    if (dir != 0 && dir != 1)
        return IE_S_EINVAL;
    pthread_mutex_lock(&m->mu);
    r = ie_imp_pipe_set(m->p[dir], cfg);
    pthread_mutex_unlock(&m->mu);
    return r;
}

int ie_imp_get(ie_imp *m, int dir, ie_imp_dir_cfg *out)
{
    if (dir != 0 && dir != 1)
        return IE_S_EINVAL;
    pthread_mutex_lock(&m->mu);
    ie_imp_pipe_get(m->p[dir], out);
    pthread_mutex_unlock(&m->mu);
    return IE_S_OK;
}

int ie_imp_stats_get(ie_imp *m, int dir, ie_imp_stats *out)
{
    if (dir != 0 && dir != 1)
        return IE_S_EINVAL;
    pthread_mutex_lock(&m->mu);
    ie_imp_pipe_stats(m->p[dir], out);
    pthread_mutex_unlock(&m->mu);
    return IE_S_OK;
}

/* Read what fd[d] has (a few batches at most, so the other side gets its turn). */
static int rx_side(ie_imp *m, int d, uint64_t now)
{
    int total = 0, round;

    for (round = 0; round < 4; round++) {
        int i, n;
        for (i = 0; i < IE_IMP_MAX_BATCH; i++) {
            m->iov[i].iov_base = m->scratch + (size_t)i * m->max_frame;
            m->iov[i].iov_len = m->max_frame;
            memset(&m->msgs[i].msg_hdr, 0, sizeof(m->msgs[i].msg_hdr));
            m->msgs[i].msg_hdr.msg_iov = &m->iov[i];
            m->msgs[i].msg_hdr.msg_iovlen = 1;
        }
        /* MSG_TRUNC: msg_len is the real length, so an oversize frame is seen (and counted) */
        n = recvmmsg(m->fd[d], m->msgs, IE_IMP_MAX_BATCH, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n <= 0)
            break;
        for (i = 0; i < n; i++)
            ie_imp_pipe_push(m->p[d], m->iov[i].iov_base, m->msgs[i].msg_len, now);
        total += n;
        if (n < IE_IMP_MAX_BATCH)
            break;
    }
    return total;
}

/* Send what pipe d has due on the other side's socket. */
static int tx_side(ie_imp *m, int d, uint64_t now)
{
    int total = 0, fd = m->fd[1 - d];
    uint32_t n, i, sent;

    while ((n = ie_imp_pipe_pop(m->p[d], now, m->ids, IE_IMP_MAX_BATCH)) > 0) {
        for (i = 0; i < n; i++) {
            uint32_t len;
            m->iov[i].iov_base = ie_imp_pipe_data(m->p[d], m->ids[i], &len);
            m->iov[i].iov_len = len;
            memset(&m->msgs[i].msg_hdr, 0, sizeof(m->msgs[i].msg_hdr));
            m->msgs[i].msg_hdr.msg_iov = &m->iov[i];
            m->msgs[i].msg_hdr.msg_iovlen = 1;
        }
        for (sent = 0; sent < n;) {
            int r = sendmmsg(fd, m->msgs + sent, n - sent, MSG_DONTWAIT);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                /* the peer veth is full or down: this frame is lost, like on a wire */
                ie_imp_pipe_release(m->p[d], m->ids[sent++], 0);
                continue;
            }
            for (i = 0; i < (uint32_t)r; i++)
                ie_imp_pipe_release(m->p[d], m->ids[sent + i], 1);
            sent += (uint32_t)r;
        }
        total += (int)n;
    }
    return total;
}

int ie_imp_step(ie_imp *m, int timeout_ms)
{
    struct pollfd pfd[2] = {{.fd = m->fd[0], .events = POLLIN}, {.fd = m->fd[1], .events = POLLIN}};
    uint64_t now, next, wait = (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000ULL;
    struct timespec ts;
    int r, d, done = 0;

    pthread_mutex_lock(&m->mu);
    now = mono_ns();
    for (d = 0; d < 2; d++) {
        next = ie_imp_pipe_next_ns(m->p[d], now);
        if (next == UINT64_MAX)
            continue;
        if (next <= now)
            wait = 0;
        else if (next - now < wait)
            wait = next - now;
    }
    pthread_mutex_unlock(&m->mu);
    ts.tv_sec = (time_t)(wait / (uint64_t)NS);
    ts.tv_nsec = (long)(wait % (uint64_t)NS);
    r = ppoll(pfd, 2, &ts, NULL);
    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    pthread_mutex_lock(&m->mu);
    now = mono_ns();
    for (d = 0; d < 2; d++)
        if (pfd[d].revents & (POLLIN | POLLERR))
            done += rx_side(m, d, now);
    for (d = 0; d < 2; d++)
        done += tx_side(m, d, now);
    pthread_mutex_unlock(&m->mu);
    return done;
}

static int step_cb(void *ctx, int timeout_ms)
{
    return ie_imp_step(ctx, timeout_ms);
}

int ie_imp_run(ie_imp *m)
{
    return ie_run_until_stopped(&m->stop, step_cb, m, 50);
}

void ie_imp_stop(ie_imp *m)
{
    atomic_store(&m->stop, 1);
}
