/* loop.c - the gateway data path: tun <-> ESP-in-UDP (RFC 3948) or raw ESP, in batches, no Python
 * per packet.  The control thread changes SAs between batches under mu (ie_loop_pause), so a rekey
 * never stops the loop.
 *
 * Where the time goes on a small box is the kernel's per-packet work, not AES-GCM, so the loop
 * hands the kernel few big packets (the wireguard-go/Tailscale recipe): with a vnet tun the kernel
 * gives us TCP super-packets (TSO) which we cut into segments, and we write runs of decrypted
 * segments back as super-packets (GRO); ESP datagrams leave as UDP GSO trains and arrive as UDP
 * GRO trains. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <net/if.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "loop_io.h"
#include "loop_policy.h"
#include "offload.h"
#include "transport.h"

#define IKE_HDR 19  /* family | address(16) | port(2) */
#define GSO_MAX_SEGS 64       /* UDP_MAX_SEGMENTS on older kernels */
#define GSO_MAX_BYTES 65000   /* a train is one UDP datagram to the stack: below 64 KiB with headers */
#define CTL_SPACE 64          /* >= CMSG_SPACE(sizeof(int)), a multiple of 8 */
#define VNET_LEN IE_VNET_LEN
#define TSO_BUF (65536 + VNET_LEN)
#define TUN_OFFLOADS (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
#define V_NO_POLICY 0xFF      /* tx verdict slot: no outbound policy matched (not an SA verdict) */
#define V_BAD_HEADER 0xFE     /* tx verdict slot: transport mode could not take the IP header off */
#define V_HELD 0xFD           /* tx verdict slot: refused by a used-up SA, kept for the next one */
#define SLOT_BAD 0xFFFEu      /* txslot of a packet transport_strip refused */
#define TRANSPORT_HEAD 40     /* transport: receive slots start this far in, room for the IP header put back */
#define EVQ 64                /* loop event ring: each SA fires each code once, so a few per rekey */

struct ie_loop {
    ie_loop_cfg cfg;
    ie_io io;                /* libc, or a test's/fuzzer's stand-in (loop_io.h) */
    ie_devout tun;           /* writes to tun, counted in st */
    int own_fds;             /* 0: made by ie_loop_new_io, the fds are not ours to reconfigure */
    ie_esp_out *out;
    ie_esp_table *in;
    atomic_int stop;
    atomic_int waiters;  /* control threads waiting in ie_loop_pause: the loop lets them in first */
    pthread_mutex_t mu;  /* held while one batch is handled; the control thread takes it to edit SAs */
    int mu_ok;
    ie_loop_stats st;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    uint32_t stride;
    ie_batch b;              /* tx/rx slots, verdicts, packets, messages */
    struct sockaddr_storage *rxaddr;
    uint8_t *txctl, *rxctl;  /* one cmsg buffer per message: UDP_SEGMENT out, UDP_GRO in */
    uint32_t rstride;        /* receive slot: a whole GRO train with UDP GRO, else one datagram */
    uint32_t rxhead;         /* transport: TRANSPORT_HEAD free bytes before each received datagram */
    int gso, gro, connected; /* offloads in use; connected: udp_fd is connected to the peer */
    /* IFF_VNET_HDR tun with TSO: one read may be a TCP super-packet, cut into segments here
     * (one per slot, maybe across calls) */
    uint8_t *vin;            /* vnet header + packet as read */
    uint8_t *coal;           /* vnet tun: vnet header + coalesced packet to write */
    ie_tso tso;              /* the super-packet in vin being cut */
    ie_gro tcpgro;           /* the run of decapsulated segments being coalesced (rxp indices) */
    ie_policies *pol;        /* several Child SAs: outbound chosen by selectors, inbound checked */
    uint16_t *txslot;        /* per tx slot: the outbound policy slot of the packet */
    /* expire events raised at once (ie_loop_set_wakeup): SPSC ring, the loop produces */
    _Atomic int evfd;
    ie_loop_event evq[EVQ];
    _Atomic uint32_t evhead, evtail;
    /* the outbound SA refused a packet (hard limit, sequence space): the tun is left unread, its
     * packets wait in the kernel queue for the rekeyed SA (ie_loop_set_out) instead of being
     * dropped one by one */
    int out_held;
    /* the packets of the batch that crossed the limit which the used-up SA refused: kept, in
     * order, in tx slots 0..nheld-1 and sent first (on the new SA) once out_held clears, so the
     * hand-over loses nothing (they were read from the tun, no kernel queue has them any more) */
    uint32_t nheld;
    ie_pkt *txsave;          /* transport mode: the packets as read, before transport_strip */
    /* written when a new SA ends a hold: a loop polling without tun interest (out_held) sends
     * what waited at once, not at the next datagram or poll_ms later (-1: none, poll_ms it is) */
    int holdfd;
};

static const ie_io libc_io = {read, write, sendmmsg, sendmsg};

/* Whether fd is connected to exactly this peer: then sends go without an address and use the
 * socket's cached route. */
static int connected_to(int fd, const struct sockaddr_storage *peer, socklen_t len)
{
    struct sockaddr_storage a;
    socklen_t alen = sizeof a;

    memset(&a, 0, sizeof a);
    if (getpeername(fd, (struct sockaddr *)&a, &alen) != 0 || alen != len)
        return 0;
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)&a, *y = (const struct sockaddr_in *)peer;
        return x->sin_family == AF_INET && x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a, *y = (const struct sockaddr_in6 *)peer;
        return x->sin6_family == AF_INET6 && x->sin6_port == y->sin6_port &&
               !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
    }
}

/* Raise a socket buffer to `want` bytes: forced past the sysctl maximum when we may (root),
 * else as far as the maximum allows.  Never shrinks it. */
static void grow_buf(int fd, int opt, int force, uint32_t want)
{
    int cur = 0, v = (int)(want > 1U << 30 ? 1U << 30 : want);
    socklen_t len = sizeof cur;

    if (getsockopt(fd, SOL_SOCKET, opt, &cur, &len) == 0 && cur / 2 >= v)
        return;  /* the kernel reports twice what was set */
    if (setsockopt(fd, SOL_SOCKET, force, &v, sizeof v) != 0)
        setsockopt(fd, SOL_SOCKET, opt, &v, sizeof v);
}

/* Everything but the devices: checks cfg, allocates the buffers.  gro: receives are UDP GRO trains. */
static int loop_alloc(const ie_loop_cfg *cfg, ie_esp_out *out, ie_esp_table *in, const ie_io *io, int gro,
                      ie_loop **loop)
{
    ie_loop *l;
    uint32_t n;

    *loop = NULL;
    if (!cfg || !out || !in || cfg->batch == 0 || cfg->batch > IE_LOOP_MAX_BATCH || cfg->mtu < 68 ||
        cfg->mtu > 65535 || (cfg->peer_family != 4 && cfg->peer_family != 6))
        return IE_S_EINVAL;
    l = calloc(1, sizeof *l);
    if (!l)
        return IE_S_ENOMEM;
    l->cfg = *cfg;
    l->io = *io;
    l->tun = (ie_devout){&l->io, cfg->tun_fd, &l->st.esp_ok, &l->st.tun_tx_errors};
    l->out = out;
    l->in = in;
    n = cfg->batch;
    l->stride = IE_ESP_HEADROOM + cfg->mtu + IE_ESP_TAILROOM;
    l->gro = gro;
    l->gso = !cfg->raw_esp && (cfg->offload & IE_LOOP_UDP_GSO);
    l->rxhead = cfg->transport ? TRANSPORT_HEAD : 0;
    l->holdfd = -1;
    l->rstride = (l->gro ? 65536 : l->stride) + l->rxhead;
    l->rxaddr = calloc(n, sizeof *l->rxaddr);
    l->txctl = calloc(n, CTL_SPACE);
    l->vin = cfg->tun_vnet ? malloc(TSO_BUF) : NULL;
    l->coal = cfg->tun_vnet ? malloc(TSO_BUF) : NULL;
    l->rxctl = calloc(n, CTL_SPACE);
    l->pol = calloc(1, sizeof *l->pol);
    l->txslot = calloc(n, sizeof *l->txslot);
    l->txsave = cfg->transport ? calloc(n, sizeof *l->txsave) : NULL;
    if (!ie_batch_init(&l->b, n, l->stride, l->rstride) || !l->rxaddr || !l->txctl || !l->rxctl ||
        !l->pol || !l->txslot || (cfg->transport && !l->txsave) ||
        (cfg->tun_vnet && (!l->vin || !l->coal)) ||
        !(l->mu_ok = pthread_mutex_init(&l->mu, NULL) == 0)) {
        ie_loop_free(l);
        return IE_S_ENOMEM;
    }
    if (cfg->peer_family == 4) {
        struct sockaddr_in *a = (struct sockaddr_in *)&l->peer;
        a->sin_family = AF_INET;
        a->sin_port = htons(cfg->peer_port);
        memcpy(&a->sin_addr, cfg->peer_addr, 4);
        l->peer_len = sizeof *a;
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&l->peer;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(cfg->peer_port);
        memcpy(&a->sin6_addr, cfg->peer_addr, 16);
        l->peer_len = sizeof *a;
    }
    atomic_init(&l->stop, 0);
    atomic_init(&l->waiters, 0);
    atomic_init(&l->evfd, -1);
    atomic_init(&l->evhead, 0);
    atomic_init(&l->evtail, 0);
    l->holdfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    *loop = l;
    return IE_S_OK;
}

int ie_loop_new_io(const ie_loop_cfg *cfg, ie_esp_out *out, ie_esp_table *in, const ie_io *io, ie_loop **loop)
{
    *loop = NULL;
    if (!cfg || !io)
        return IE_S_EINVAL;
    return loop_alloc(cfg, out, in, io, !cfg->raw_esp && !cfg->transport && (cfg->offload & IE_LOOP_UDP_GRO), loop);
}

int ie_loop_new(const ie_loop_cfg *cfg, ie_esp_out *out, ie_esp_table *in, ie_loop **loop)
{
    ie_loop *l;
    int rc, gro;

    *loop = NULL;
    if (!cfg)
        return IE_S_EINVAL;
    if (!ie_vnet_matches(cfg->tun_fd, cfg->tun_vnet))  /* a vnet header exactly when the tun has one */
        return IE_S_EINVAL;
    /* the batch read stops at EAGAIN, so tun must not block */
    {
        int fl = fcntl(cfg->tun_fd, F_GETFL);
        if (fl < 0 || fcntl(cfg->tun_fd, F_SETFL, fl | O_NONBLOCK) < 0)
            return IE_S_EINVAL;
    }
    gro = !cfg->raw_esp && !cfg->transport && (cfg->offload & IE_LOOP_UDP_GRO) &&
          setsockopt(cfg->udp_fd, SOL_UDP, UDP_GRO, &(int){1}, sizeof(int)) == 0;
    rc = loop_alloc(cfg, out, in, &libc_io, gro, &l);
    if (rc != IE_S_OK) {
        if (gro)
            setsockopt(cfg->udp_fd, SOL_UDP, UDP_GRO, &(int){0}, sizeof(int));
        return rc;
    }
    l->own_fds = 1;
    l->connected = !cfg->raw_esp && connected_to(cfg->udp_fd, &l->peer, l->peer_len);
    if (cfg->sock_buf) {
        grow_buf(cfg->udp_fd, SO_SNDBUF, SO_SNDBUFFORCE, cfg->sock_buf);
        grow_buf(cfg->udp_fd, SO_RCVBUF, SO_RCVBUFFORCE, cfg->sock_buf);
    }
    if (cfg->tun_vnet)  /* refused (old kernel): plain packets still come, behind a header */
        ioctl(cfg->tun_fd, TUNSETOFFLOAD, (unsigned long)TUN_OFFLOADS);
    *loop = l;
    return IE_S_OK;
}

void ie_loop_free(ie_loop *l)
{
    if (!l)
        return;
    ie_batch_free(&l->b);
    free(l->rxaddr);
    free(l->txctl);
    free(l->rxctl);
    free(l->pol);
    free(l->txslot);
    free(l->txsave);
    if (l->vin && l->own_fds)  /* whoever reads the tun next gets plain packets (still behind a header) */
        ioctl(l->cfg.tun_fd, TUNSETOFFLOAD, 0UL);
    free(l->vin);
    free(l->coal);
    if (l->gro && l->own_fds)  /* asyncio may read the socket again: one datagram per read */
        setsockopt(l->cfg.udp_fd, SOL_UDP, UDP_GRO, &(int){0}, sizeof(int));
    if (l->mu_ok)
        pthread_mutex_destroy(&l->mu);
    if (l->holdfd >= 0)
        close(l->holdfd);
    free(l);
}

static int step(void *l, int timeout_ms)
{
    return ie_loop_step(l, timeout_ms);
}

int ie_loop_run(ie_loop *l)
{
    int rc = ie_run_until_stopped(&l->stop, step, l, l->cfg.poll_ms);

    pthread_mutex_lock(&l->mu);
    if (l->nheld) {  /* the loop ends before a new SA came: what waited for it is lost, counted */
        l->st.encap_drop += l->nheld;
        l->st.encap_exhausted += l->nheld;
        l->nheld = 0;
    }
    pthread_mutex_unlock(&l->mu);
    return rc;
}

void ie_loop_stop(ie_loop *l)
{
    atomic_store(&l->stop, 1);
}

void ie_loop_pause(ie_loop *l)
{
    atomic_fetch_add(&l->waiters, 1);
    pthread_mutex_lock(&l->mu);
    atomic_fetch_sub(&l->waiters, 1);
}

void ie_loop_resume(ie_loop *l)
{
    pthread_mutex_unlock(&l->mu);
}

static void ev_wake(int fd);

/* a new outbound SA: the tun queue and the held packets drain into it (wake a polling loop) */
static void end_hold(ie_loop *l)
{
    if (l->out_held && l->holdfd >= 0)
        ev_wake(l->holdfd);
    l->out_held = 0;
}

ie_esp_out *ie_loop_set_out(ie_loop *l, ie_esp_out *out)
{
    ie_esp_out *old = l->out;

    if (out) { /* the loop always has an outbound SA; stop it to stop sending */
        l->out = out;
        end_hold(l);
    }
    return old;
}

int ie_loop_set_out_policy(ie_loop *l, uint32_t slot, ie_esp_out *out, const ie_ts *local, uint32_t nlocal,
                           const ie_ts *remote, uint32_t nremote)
{
    int r = ie_pol_set_out(l->pol, slot, out, local, nlocal, remote, nremote);

    if (r == IE_S_OK && out)
        end_hold(l);  /* a rekeyed child: the held tun queue drains again */
    return r;
}

int ie_loop_set_in_policy(ie_loop *l, uint32_t spi, const ie_ts *local, uint32_t nlocal, const ie_ts *remote,
                          uint32_t nremote)
{
    return ie_pol_set_in(l->pol, spi, local, nlocal, remote, nremote);
}

int ie_loop_del_in_policy(ie_loop *l, uint32_t spi)
{
    return ie_pol_del_in(l->pol, spi);
}

int ie_loop_out_slot(const ie_loop *l, const uint8_t *pkt, uint32_t len)
{
    uint32_t slot;

    if (!l->pol->nout)
        return -2;
    slot = ie_pol_out_lookup(l->pol, pkt, len);
    return slot == IE_POL_NONE ? -1 : (int)slot;
}

int ie_loop_in_ok(ie_loop *l, uint32_t spi, const uint8_t *pkt, uint32_t len)
{
    return ie_pol_in_ok(l->pol, spi, pkt, len);
}

/* Encapsulate the n packets read: all on the loop's SA, or (policies set) each on its slot's SA,
 * in runs of consecutive packets of one slot so a bulk flow still makes one batch call. */
static int transport_strip(const ie_loop *l, ie_pkt *p);

static void encap_batch(ie_loop *l, uint32_t n)
{
    uint32_t i, j;
    int pol = l->pol->nout != 0;

    if (!pol && !l->cfg.transport) {
        ie_esp_encap(l->out, l->b.txp, n, l->b.txv);
        return;
    }
    for (i = 0; i < n; i++) {  /* the slot first: the selectors read the IP header transport takes off */
        ie_pkt *p = &l->b.txp[i];
        uint16_t slot = pol ? (uint16_t)ie_pol_out_lookup(l->pol, p->buf + p->off, p->len) : 0;
        if (l->cfg.transport && slot != IE_POL_NONE && !transport_strip(l, p))
            slot = SLOT_BAD;
        l->txslot[i] = slot;
    }
    for (i = 0; i < n; i = j) {
        uint16_t slot = l->txslot[i];
        for (j = i + 1; j < n && l->txslot[j] == slot; j++)
            ;
        if (slot == IE_POL_NONE)
            memset(l->b.txv + i, V_NO_POLICY, j - i);
        else if (slot == SLOT_BAD)
            memset(l->b.txv + i, V_BAD_HEADER, j - i);
        else
            ie_esp_encap(pol ? l->pol->out[slot].out : l->out, l->b.txp + i, j - i, l->b.txv + i);
    }
}

void ie_loop_set_wakeup(ie_loop *l, int event_fd)
{
    atomic_store(&l->evfd, event_fd);
}

size_t ie_loop_events(ie_loop *l, ie_loop_event *out, size_t max)
{
    uint32_t h = atomic_load_explicit(&l->evhead, memory_order_relaxed);
    uint32_t t = atomic_load_explicit(&l->evtail, memory_order_acquire);
    size_t n = 0;

    while (h != t && n < max)
        out[n++] = l->evq[h++ % EVQ];
    atomic_store_explicit(&l->evhead, h, memory_order_release);
    return n;
}

/* queue the codes popped from one SA's ring and wake the control side (one write per batch
 * at most: the eventfd counter adds up, a full ring drops nothing the counters cannot redo) */
static int ev_push(ie_loop *l, uint64_t sa, uint32_t spi, int outbound, const uint8_t *codes, size_t n)
{
    uint32_t t = atomic_load_explicit(&l->evtail, memory_order_relaxed);
    uint32_t h = atomic_load_explicit(&l->evhead, memory_order_acquire);
    size_t i;

    for (i = 0; i < n && t - h < EVQ; i++, t++)
        l->evq[t % EVQ] = (ie_loop_event){.sa = sa, .spi = spi, .code = codes[i], .outbound = (uint8_t)outbound};
    atomic_store_explicit(&l->evtail, t, memory_order_release);
    return n > 0;
}

static void ev_wake(int fd)
{
    uint64_t one = 1;

    if (write(fd, &one, sizeof one) < 0) {
        /* EAGAIN: the counter is already huge, a wake-up is pending anyway */
    }
}

/* after an encap batch: the outbound SA's events (nothing to do without a wake-up fd) */
static void out_events(ie_loop *l)
{
    uint8_t codes[8];
    int fd = atomic_load_explicit(&l->evfd, memory_order_relaxed), woke;
    uint32_t slot;
    size_t n;

    if (fd < 0)
        return;
    n = ie_esp_out_events(l->out, codes, sizeof codes);
    woke = n && ev_push(l, (uint64_t)(uintptr_t)l->out, 0, 1, codes, n);
    for (slot = 0; slot < l->pol->nout; slot++) {  /* several Child SAs: each slot's SA fires on its own */
        ie_esp_out *o = l->pol->out[slot].out;
        if (!o || o == l->out)
            continue;
        n = ie_esp_out_events(o, codes, sizeof codes);
        woke |= n && ev_push(l, (uint64_t)(uintptr_t)o, 0, 1, codes, n);
    }
    if (woke)
        ev_wake(fd);
}

/* after a decap batch: the events of each inbound SA it used (one lookup per SPI change) */
static void in_events(ie_loop *l, uint32_t k)
{
    uint8_t codes[8];
    int fd = atomic_load_explicit(&l->evfd, memory_order_relaxed), woke = 0;
    uint32_t i, last = 0;

    if (fd < 0)
        return;
    for (i = 0; i < k; i++) {
        uint32_t spi = l->b.rxp[i].spi;
        size_t n;
        if (l->b.rxv[i] != IE_OK || spi == last)
            continue;
        last = spi;
        n = ie_esp_table_events(l->in, spi, codes, sizeof codes);
        woke |= n && ev_push(l, 0, spi, 0, codes, n);
    }
    if (woke)
        ev_wake(fd);
}

void ie_loop_get_stats(const ie_loop *l, ie_loop_stats *out)
{
    *out = l->st;  /* plain snapshot: may be a batch behind while the loop runs */
}

/* Errors a socket reports late, from an ICMP message about an earlier datagram. */
static int async_error(int e)
{
    return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN ||
           e == EPROTO || e == EMSGSIZE;
}

/* POLLERR on the (connected) socket: an ICMP error (peer restarting, port or host unreachable).
 * Reading SO_ERROR clears it; with IP_RECVERR the error sits in the error queue instead, so
 * drain that.  Counted, never fatal: the peer may well come back. */
static void clear_sock_error(ie_loop *l)
{
    int err = 0, i;
    socklen_t len = sizeof err;

    l->st.sock_errors++;
    if (getsockopt(l->cfg.udp_fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err)
        return;
    for (i = 0; i < 64; i++) {
        uint8_t data[64], ctl[512];
        struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                            .msg_controllen = sizeof ctl};
        if (recvmsg(l->cfg.udp_fd, &mh, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            break;
    }
}

/* ---- IFF_VNET_HDR tun: finish checksums, cut TCP super-packets (TSO) into segments ---- */

/* a packet read from tun that cannot be sent (too big, bad vnet header): counted, dropped */
static void tun_bad(ie_loop *l)
{
    l->st.tun_rx++;
    l->st.tun_bad++;
    l->st.encap_drop++;
}

/* Fill tx slots n.. from a vnet tun: plain packets (checksum finished if the kernel left it to
 * us) and segments of super-packets.  Returns the slots in use (n and more). */
static uint32_t tun_read_vnet(ie_loop *l, uint32_t n)
{
    while (n < l->cfg.batch) {
        uint8_t *buf = l->b.txmem + (size_t)n * l->stride, *data = buf + IE_ESP_HEADROOM;
        ie_pkt *p = &l->b.txp[n];
        uint32_t len;
        if (l->tso.active) {
            len = ie_tso_next(&l->tso, data);
        } else {
            struct virtio_net_hdr h;
            ssize_t r = l->io.read(l->cfg.tun_fd, l->vin, TSO_BUF);
            uint32_t plen;
            if (r <= 0)
                break;
            if (r <= VNET_LEN) {
                tun_bad(l);
                continue;
            }
            memcpy(&h, l->vin, sizeof h);
            plen = (uint32_t)r - VNET_LEN;
            if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
                l->st.tun_tso++;
                if (!ie_tso_start(&l->tso, l->vin + VNET_LEN, plen, 0, &h, l->cfg.mtu)) {
                    tun_bad(l);
                }
                continue;
            }
            if (plen > l->cfg.mtu) {
                tun_bad(l);
                continue;
            }
            memcpy(data, l->vin + VNET_LEN, plen);
            if ((h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && !ie_vnet_finish_csum(data, plen, &h)) {
                tun_bad(l);
                continue;
            }
            len = plen;
        }
        ie_pkt_init(p, buf, IE_ESP_HEADROOM, len, l->stride);
        p->next_header = (data[0] >> 4) == 6 ? 41 : 4;
        n++;
    }
    return n;
}

/* A GSO train the kernel refused, datagram by datagram. */
static void send_each(ie_loop *l, const struct msghdr *train)
{
    size_t j;

    for (j = 0; j < train->msg_iovlen; j++) {
        struct msghdr mh = {.msg_name = train->msg_name, .msg_namelen = train->msg_namelen,
                            .msg_iov = &train->msg_iov[j], .msg_iovlen = 1};
        if (l->io.sendmsg(l->cfg.udp_fd, &mh, 0) < 0)
            l->st.send_errors++;
        else
            l->st.esp_tx++;
    }
}

/* Transport mode: the packet must go to the peer, whole; its IP header goes (the socket writes
 * the outer one) and its protocol becomes the ESP next header. */
static int transport_strip(const ie_loop *l, ie_pkt *p)
{
    const uint8_t *d = p->buf + p->off;
    ie_ipinfo ip;
    int v6 = l->cfg.peer_family == 6;

    if (!ie_ip_parse(d, p->len, &ip) || ip.fragment || ip.v6 != v6 ||
        memcmp(d + (v6 ? 24 : 16), l->cfg.peer_addr, v6 ? 16 : 4) != 0)
        return 0;
    p->off += ip.hlen;
    p->len = ip.total - ip.hlen;
    p->next_header = ip.proto;
    return 1;
}

/* Transport mode: put an IP header peer -> local in front of each decapsulated payload (the
 * receive slots leave TRANSPORT_HEAD bytes for it); after UDP encapsulation the sender's TCP/UDP
 * checksum covered its own view of the addresses (NAT): recompute it. */
static void transport_restore(const ie_loop *l, ie_pkt *p)
{
    int v6 = l->cfg.peer_family == 6;
    uint32_t hl = v6 ? 40 : 20;
    ie_ipinfo ip;

    ie_ip_build(p->buf + p->off - hl, v6, l->cfg.peer_addr, l->cfg.local_addr, p->next_header, p->len);
    p->off -= hl;
    p->len += hl;
    if (!l->cfg.raw_esp) {
        memset(&ip, 0, sizeof ip);
        ip.v6 = v6;
        ip.hlen = hl;
        ip.total = p->len;
        ip.proto = p->next_header;
        ie_l4_csum_fix(p->buf + p->off, &ip);
    }
}

/* The outbound SA packet i of the batch went to (encap_batch's choice). */
static ie_esp_out *sa_of(const ie_loop *l, uint32_t i)
{
    if (!l->pol->nout)
        return l->out;
    return l->txslot[i] < l->pol->nout ? l->pol->out[l->txslot[i]].out : NULL;
}

/* Whether a packet after i left on SA o: then o was not used up when it refused i (an OpenSSL
 * failure, which may have left the packet half encrypted: a drop, not a packet to keep). */
static int sent_later(const ie_loop *l, uint32_t i, uint32_t n, const ie_esp_out *o)
{
    for (i++; i < n; i++)
        if (l->b.txv[i] == IE_OK && sa_of(l, i) == o)
            return 1;
    return 0;
}

/* After encap: a packet a used-up SA refused is kept (V_HELD) rather than dropped, and the tun
 * is left unread until a new SA is in (out_held); any other refusal is a counted drop.  An SA
 * refuses by its limits before it touches a packet, so a kept packet is as read. */
static void sort_refused(ie_loop *l, uint32_t n)
{
    uint32_t i;

    for (i = 0; i < n; i++) {
        ie_esp_out *o;
        if (l->b.txv[i] != IE_EXHAUSTED)
            continue;
        o = sa_of(l, i);
        if (o && ie_esp_out_spent(o) && !sent_later(l, i, n, o)) {
            l->b.txv[i] = V_HELD;
            l->st.encap_held++;
            l->out_held = 1;
        }
    }
}

/* After the sends: the held packets move, in order, to tx slots 0.. (their slot buffers are
 * free again), as read (transport mode: with the IP header transport_strip took off). */
static void keep_held(ie_loop *l, uint32_t n)
{
    uint32_t i, h = 0;

    for (i = 0; i < n; i++) {
        ie_pkt p;
        uint8_t *slot = l->b.txmem + (size_t)h * l->stride;
        if (l->b.txv[i] != V_HELD)
            continue;
        p = l->txsave ? l->txsave[i] : l->b.txp[i];
        if (h != i)  /* slot h < i: its packet is already sent or dropped */
            memcpy(slot + p.off, p.buf + p.off, p.len);
        p.buf = slot;
        p.flags = 0;
        l->b.txp[h++] = p;
    }
    l->nheld = h;
}

/* tun -> encap -> one sendmmsg.  Returns packets read (and held ones sent again). */
static int tun_to_udp(ie_loop *l)
{
    uint32_t n = l->nheld, held = l->nheld, i, k = 0, m, seg;
    int retried, closed;

    l->nheld = 0;  /* slots 0..held-1: refused by the last SA, sent first now */
    if (l->vin)
        n = tun_read_vnet(l, n);
    while (!l->vin && n < l->cfg.batch) {
        ie_pkt *p = &l->b.txp[n];
        uint8_t *buf = l->b.txmem + (size_t)n * l->stride;
        /* one byte more than the MTU (the tailroom has it) tells an oversized packet apart */
        ssize_t r = l->io.read(l->cfg.tun_fd, buf + IE_ESP_HEADROOM, (size_t)l->cfg.mtu + 1);
        if (r <= 0)
            break;  /* EAGAIN (nonblocking tun) or nothing more */
        if ((size_t)r > l->cfg.mtu) {
            tun_bad(l);
            continue;
        }
        ie_pkt_init(p, buf, IE_ESP_HEADROOM, (uint32_t)r, l->stride);
        p->next_header = (buf[IE_ESP_HEADROOM] >> 4) == 6 ? 41 : 4;  /* IPv6 / IPv4 in tunnel mode */
        n++;
    }
    if (!n)
        return 0;
    l->st.tun_rx += n - held;
    if (l->txsave)
        memcpy(l->txsave, l->b.txp, n * sizeof *l->txsave);
    encap_batch(l, n);
    out_events(l);
    sort_refused(l, n);
    /* One message per datagram, or with UDP GSO one per train of equal-size datagrams (the last
     * may be shorter): the kernel then walks its UDP/IP/veth path once per train. */
    for (i = 0, m = 0, seg = 0, closed = 1; i < n; i++) {
        uint32_t len = l->b.txp[i].len;
        if (l->b.txv[i] != IE_OK) {
            if (l->b.txv[i] == V_NO_POLICY) {
                l->st.no_policy++;
            } else if (l->b.txv[i] != V_HELD) {
                l->st.encap_drop++;
                if (l->b.txv[i] == IE_EXHAUSTED)
                    l->st.encap_exhausted++;
                else
                    l->st.encap_error++;
            }
            continue;
        }
        l->b.txiov[k].iov_base = l->b.txp[i].buf + l->b.txp[i].off;
        l->b.txiov[k].iov_len = len;
        if (l->gso && !closed && len <= seg && l->b.txm[m - 1].msg_hdr.msg_iovlen < GSO_MAX_SEGS &&
            (l->b.txm[m - 1].msg_hdr.msg_iovlen + 1) * seg <= GSO_MAX_BYTES) {
            l->b.txm[m - 1].msg_hdr.msg_iovlen++;
            closed = len < seg;
        } else {
            memset(&l->b.txm[m], 0, sizeof l->b.txm[m]);
            l->b.txm[m].msg_hdr.msg_iov = &l->b.txiov[k];
            l->b.txm[m].msg_hdr.msg_iovlen = 1;
            l->b.txm[m].msg_hdr.msg_name = l->connected ? NULL : &l->peer;
            l->b.txm[m].msg_hdr.msg_namelen = l->connected ? 0 : l->peer_len;
            seg = len;
            closed = 0;
            m++;
        }
        k++;
    }
    for (i = 0; i < m; i++) {
        struct msghdr *mh = &l->b.txm[i].msg_hdr;
        if (mh->msg_iovlen > 1) {
            struct cmsghdr *c = (struct cmsghdr *)(l->txctl + (size_t)i * CTL_SPACE);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t segsz = (uint16_t)mh->msg_iov[0].iov_len;
            memcpy(CMSG_DATA(c), &segsz, sizeof segsz);  /* no typed store into a byte buffer */
            mh->msg_control = c;
            mh->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
        }
    }
    for (i = 0, retried = 0; i < m;) {
        int s = l->io.sendmmsg(l->cfg.udp_fd, l->b.txm + i, m - i, 0), e = errno;
        if (s > 0) {
            for (; s > 0; s--, i++) {
                l->st.esp_tx += l->b.txm[i].msg_hdr.msg_iovlen;
                l->st.udp_gso_trains += l->b.txm[i].msg_hdr.msg_iovlen > 1;
            }
            continue;
        }
        if (s < 0 && e == EINTR)
            continue;
        if (s < 0 && !retried && async_error(e)) {
            l->st.sock_errors++;  /* an earlier ICMP error, not this packet's fault */
            retried = 1;
            continue;
        }
        if (s < 0 && l->b.txm[i].msg_hdr.msg_iovlen > 1) {
            /* the kernel refused the train (no GSO there, or it would need IP fragments): send
             * its datagrams one by one; stop trying GSO where the kernel/device lacks it */
            if (e == EIO || e == EOPNOTSUPP || e == ENOPROTOOPT || e == ENOTSUP)
                l->gso = 0;
            send_each(l, &l->b.txm[i].msg_hdr);
            i++;
            continue;
        }
        for (; i < m; i++)  /* a full socket buffer drops, like a NIC queue would */
            l->st.send_errors += l->b.txm[i].msg_hdr.msg_iovlen;
    }
    if (l->out_held)
        keep_held(l, n);
    return (int)n;
}

static void to_ike(ie_loop *l, const struct sockaddr_storage *from, const uint8_t *msg, size_t len)
{
    uint8_t hdr[IKE_HDR] = {0};
    struct iovec iov[2];
    struct msghdr mh;

    if (l->cfg.ike_fd < 0) {
        l->st.ike_drop++;
        return;
    }
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)from;
        hdr[0] = 4;
        memcpy(hdr + 1, &a->sin_addr, 4);
        memcpy(hdr + 17, &a->sin_port, 2);
    } else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)from;
        hdr[0] = 6;
        memcpy(hdr + 1, &a->sin6_addr, 16);
        memcpy(hdr + 17, &a->sin6_port, 2);
    }
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof hdr;
    iov[1].iov_base = (void *)msg;
    iov[1].iov_len = len;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = iov;
    mh.msg_iovlen = 2;
    if (l->io.sendmsg(l->cfg.ike_fd, &mh, MSG_DONTWAIT) < 0)
        l->st.ike_drop++;
    else
        l->st.ike_rx++;
}

/* ---- vnet tun, write side: consecutive segments of one TCP flow go to the kernel as one
 * super-packet (GRO in userspace), so forwarding and the receiving TCP see a few big packets ---- */

/* a datagram not written to tun, by reason (IE_TOO_SHORT for what never reached decap) */
static void decap_dropped(ie_loop *l, uint8_t v)
{
    l->st.decap_drop++;
    switch (v) {
    case IE_BAD_ICV: l->st.decap_bad_icv++; break;
    case IE_REPLAY: l->st.decap_replay++; break;
    case IE_UNKNOWN_SA: l->st.decap_unknown_sa++; break;
    case IE_EXHAUSTED: l->st.decap_exhausted++; break;
    default: l->st.decap_other++; break;
    }
}

/* decap the k collected ESP datagrams; write each OK payload to tun (vnet tun: coalesced) */
static void rx_flush(ie_loop *l, uint32_t k)
{
    uint32_t i;

    if (!k)
        return;
    ie_esp_decap(l->in, l->b.rxp, k, l->b.rxv);
    in_events(l, k);
    for (i = 0; i < k; i++) {
        ie_pkt *p = &l->b.rxp[i];
        if (l->b.rxv[i] != IE_OK) {
            decap_dropped(l, l->b.rxv[i]);
            continue;
        }
        if (l->rxhead)  /* transport: the selectors are checked on the packet with its header back */
            transport_restore(l, p);
        if (!ie_pol_in_ok(l->pol, p->spi, p->buf + p->off, p->len)) {
            l->b.rxv[i] = IE_UNKNOWN_SA;  /* any non-OK: not written below */
            p->flags &= (uint8_t)~IE_PKT_DELIVER;
            l->st.ts_drop++;
            continue;
        }
        if (!l->vin)
            ie_devout_write(&l->tun, p->buf + p->off, p->len, 1);
    }
    if (l->vin)
        l->st.tun_gro += ie_vnet_deliver(&l->tcpgro, l->coal, l->b.rxp, k, 0, ie_devout_write, &l->tun);
}

/* classify one datagram: IKE, keepalive, or ESP for the decap batch (flushed when full) */
static void rx_one(ie_loop *l, const struct sockaddr_storage *from, uint8_t *d, uint32_t len, uint32_t *k)
{
    l->st.udp_rx++;
    if (l->cfg.raw_esp) {
        /* raw IPv4 sockets hand over the IP header too; IPv6 ones do not */
        if (l->cfg.peer_family == 4) {
            uint32_t ihl = len ? (uint32_t)(d[0] & 15) * 4 : 0;
            if (len < 20 || (d[0] >> 4) != 4 || ihl < 20 || ihl > len) {
                decap_dropped(l, IE_BAD_HEADER);
                return;
            }
            d += ihl;
            len -= ihl;
        }
    } else if (len == 1 && d[0] == 0xFF) {  /* RFC 3948 NAT-keepalive */
        l->st.keepalive++;
        return;
    } else if (len >= 4 && !d[0] && !d[1] && !d[2] && !d[3]) {  /* non-ESP marker: IKE */
        to_ike(l, from, d + 4, len - 4);
        return;
    }
    if (l->rxhead)  /* transport: the slot has rxhead bytes before d for the IP header put back */
        ie_pkt_init(&l->b.rxp[*k], d - l->rxhead, l->rxhead, len, len + l->rxhead);
    else
        ie_pkt_init(&l->b.rxp[*k], d, 0, len, len);  /* decap only shrinks */
    if (++*k == l->cfg.batch) {
        rx_flush(l, *k);
        *k = 0;
    }
}

/* the segment size of a UDP GRO train (0: a single datagram) */
static uint32_t gro_size(struct msghdr *mh)
{
    struct cmsghdr *c;

    for (c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c))
        if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            return v > 0 ? (uint32_t)v : 0;
        }
    return 0;
}

void ie_loop_rx_msg(ie_loop *l, const struct sockaddr_storage *from, uint8_t *d, uint32_t len, uint32_t seg,
                    int trunc, uint32_t *k)
{
    uint32_t o;

    if (trunc) {
        l->st.udp_rx++;
        decap_dropped(l, IE_TOO_SHORT);
        return;
    }
    if (!seg || seg >= len) {
        rx_one(l, from, d, len, k);
        return;
    }
    l->st.udp_gro_trains++;
    for (o = 0; o < len; o += seg)
        rx_one(l, from, d + o, len - o < seg ? len - o : seg, k);
}

void ie_loop_rx_end(ie_loop *l, uint32_t k)
{
    rx_flush(l, k);
}

int ie_loop_tun_batch(ie_loop *l)
{
    return tun_to_udp(l);
}

/* one recvmmsg -> split GRO trains -> classify -> decap -> tun.  Returns datagrams. */
static int udp_to_tun(ie_loop *l)
{
    uint32_t n = l->cfg.batch, i, k = 0, before = (uint32_t)l->st.udp_rx;
    int r;

    for (i = 0; i < n; i++) {
        l->b.rxiov[i].iov_base = l->b.rxmem + (size_t)i * l->rstride + l->rxhead;
        l->b.rxiov[i].iov_len = l->rstride - l->rxhead;
        memset(&l->b.rxm[i], 0, sizeof l->b.rxm[i]);
        l->b.rxm[i].msg_hdr.msg_iov = &l->b.rxiov[i];
        l->b.rxm[i].msg_hdr.msg_iovlen = 1;
        l->b.rxm[i].msg_hdr.msg_name = &l->rxaddr[i];
        l->b.rxm[i].msg_hdr.msg_namelen = sizeof l->rxaddr[i];
        if (l->gro) {
            l->b.rxm[i].msg_hdr.msg_control = l->rxctl + (size_t)i * CTL_SPACE;
            l->b.rxm[i].msg_hdr.msg_controllen = CTL_SPACE;
        }
    }
    r = recvmmsg(l->cfg.udp_fd, l->b.rxm, n, MSG_DONTWAIT, NULL);
    if (r <= 0)
        return 0;
    for (i = 0; i < (uint32_t)r; i++)
        ie_loop_rx_msg(l, &l->rxaddr[i], l->b.rxiov[i].iov_base, l->b.rxm[i].msg_len,
                       l->gro ? gro_size(&l->b.rxm[i].msg_hdr) : 0, !!(l->b.rxm[i].msg_hdr.msg_flags & MSG_TRUNC), &k);
    rx_flush(l, k);
    return (int)((uint32_t)l->st.udp_rx - before);
}

int ie_loop_step(ie_loop *l, int timeout_ms)
{
    struct pollfd pfd[3] = {{.fd = l->cfg.tun_fd, .events = l->out_held ? 0 : POLLIN},
                            {.fd = l->cfg.udp_fd, .events = POLLIN},
                            {.fd = l->holdfd, .events = POLLIN}};  /* fd -1: ignored by poll */
    int r = poll(pfd, 3, (l->tso.active || l->nheld) && !l->out_held ? 0 : timeout_ms), done = 0;

    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    if (pfd[0].revents & (POLLERR | POLLNVAL) || pfd[1].revents & POLLNVAL)
        return -EBADF;  /* tun gone or an fd closed under us */
    while (atomic_load(&l->waiters))  /* a control thread wants in between batches */
        sched_yield();
    pthread_mutex_lock(&l->mu);
    if (pfd[1].revents & POLLERR)
        clear_sock_error(l);
    if (pfd[2].revents & POLLIN) {
        uint64_t v;
        if (read(l->holdfd, &v, sizeof v) < 0) {
            /* EAGAIN: another step took it */
        }
    }
    /* nheld: a new SA came in (out_held cleared) while we polled: its held packets go now */
    done = (!l->out_held && (pfd[0].revents & POLLIN || l->tso.active || l->nheld) ? tun_to_udp(l) : 0) +
           (pfd[1].revents & POLLIN ? udp_to_tun(l) : 0);
    l->st.batches += done > 0;
    pthread_mutex_unlock(&l->mu);
    return done;
}
