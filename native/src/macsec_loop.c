/* macsec_loop.c - the MACsec link data path: tap <-> SecY <-> AF_PACKET on the phy, in batches, no
 * Python per frame.  SA changes (MKA) come in from another thread under a mutex that the loop holds
 * only while it processes one batch, so a SAK rotation never stops the loop or drops frames.
 *
 * With a vnet tap (IFF_VNET_HDR + TSO offloads) the node's TCP hands us 64 KiB super-packets which
 * we cut into link-MTU frames before protecting them, and runs of validated segments of one flow go
 * back up as one super-packet (userspace GRO): the per-frame cost in the kernel is what limits a
 * small box, not AES-GCM.  Same recipe as loop.c, with an Ethernet header in front. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

#define ETH_MACSEC 0x88E5
#define ETH_EAPOL 0x888E
#define TAG_ROOM 8          /* up to two VLAN tags inserted in front of the frame */
#define HEAD (IE_MACSEC_HEADROOM + TAG_ROOM)
#define VNET_LEN 10         /* struct virtio_net_hdr in front of every frame on a vnet tap */
#define RX_OFF 16           /* received frames start here: room for a vnet header on the way up */
#define VNET_BUF (65536 + VNET_LEN)
#define GRO_MAX 65000       /* bytes in one coalesced frame (its IP length must fit 16 bits) */
#define GRO_SEGS 64
#define TAP_OFFLOADS (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)

struct ie_mloop {
    ie_mloop_cfg cfg;
    ie_macsec_tx *tx;        /* borrowed; NULL until MKA installs one */
    ie_macsec_rx *rx;        /* borrowed */
    pthread_mutex_t mu;      /* guards tx, rx's SA table and st against the control thread */
    atomic_int stop;
    ie_mloop_stats st;
    uint32_t stride;
    uint32_t tagb;           /* bytes of VLAN tags: 0, 4 or 8 */
    uint8_t tags[TAG_ROOM];  /* the tag(s) as they go on the wire */
    uint8_t *txmem, *rxmem, *txv, *rxv;
    ie_pkt *txp, *rxp;
    struct mmsghdr *txm, *rxm;
    struct iovec *txiov, *rxiov;
    struct sockaddr_ll *rxaddr;
    uint32_t *rxidx;
    /* vnet tap: vin holds a read (vnet header + frame, maybe a TCP super-packet cut here one
     * segment per slot, maybe across batches); coal the coalesced frame being written */
    uint8_t *vin, *coal;
    uint32_t *runidx;
    int tso_active, tso_v6;
    uint32_t tso_len, tso_ipo, tso_tcpo, tso_hlen, tso_mss, tso_off, tso_seg, tso_seq;
    uint16_t tso_id;
};

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) >= 0;
}

int ie_mloop_new(const ie_mloop_cfg *cfg, ie_macsec_rx *rx, ie_mloop **loop)
{
    ie_mloop *l;
    uint32_t n;

    *loop = NULL;
    if (!cfg || !rx || cfg->batch == 0 || cfg->batch > IE_LOOP_MAX_BATCH || cfg->max_frame < 60 ||
        cfg->max_frame > 65535 || cfg->tap_fd < 0 || cfg->phy_fd < 0 || cfg->stag > 4094 ||
        cfg->ctag > 4094 || (cfg->stag && !cfg->ctag))
        return IE_S_EINVAL;
    /* a vnet header is expected exactly when the tap has one */
    {
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        if (ioctl(cfg->tap_fd, TUNGETIFF, &ifr) == 0 ? !!(ifr.ifr_flags & IFF_VNET_HDR) != !!cfg->tap_vnet
                                                     : cfg->tap_vnet)
            return IE_S_EINVAL;
    }
    /* batch reads stop at EAGAIN */
    if (!set_nonblock(cfg->tap_fd) || !set_nonblock(cfg->phy_fd))
        return IE_S_EINVAL;
    l = calloc(1, sizeof *l);
    if (!l)
        return IE_S_ENOMEM;
    l->cfg = *cfg;
    l->rx = rx;
    n = cfg->batch;
    /* room for: RX_OFF, up to two tags, SecTAG with SCI, the frame, ICV (and HEAD on the tx side) */
    l->stride = RX_OFF + HEAD + cfg->max_frame + TAG_ROOM + IE_MACSEC_TAILROOM;
    if (cfg->stag) {
        uint8_t t[8] = {0x88, 0xA8, (uint8_t)(cfg->stag >> 8), (uint8_t)cfg->stag,
                        0x81, 0x00, (uint8_t)(cfg->ctag >> 8), (uint8_t)cfg->ctag};
        memcpy(l->tags, t, 8);
        l->tagb = 8;
    } else if (cfg->ctag) {
        uint8_t t[4] = {0x81, 0x00, (uint8_t)(cfg->ctag >> 8), (uint8_t)cfg->ctag};
        memcpy(l->tags, t, 4);
        l->tagb = 4;
    }
    l->txmem = malloc((size_t)n * l->stride);
    l->rxmem = malloc((size_t)n * l->stride);
    l->txv = calloc(n, 1);
    l->rxv = calloc(n, 1);
    l->txp = calloc(n, sizeof *l->txp);
    l->rxp = calloc(n, sizeof *l->rxp);
    l->txm = calloc(n, sizeof *l->txm);
    l->rxm = calloc(n, sizeof *l->rxm);
    l->txiov = calloc(n, sizeof *l->txiov);
    l->rxiov = calloc(n, sizeof *l->rxiov);
    l->rxaddr = calloc(n, sizeof *l->rxaddr);
    l->rxidx = calloc(n, sizeof *l->rxidx);
    l->runidx = calloc(n, sizeof *l->runidx);
    l->vin = cfg->tap_vnet ? malloc(VNET_BUF) : NULL;
    l->coal = cfg->tap_vnet ? malloc(VNET_BUF) : NULL;
    if (!l->txmem || !l->rxmem || !l->txv || !l->rxv || !l->txp || !l->rxp || !l->txm || !l->rxm ||
        !l->txiov || !l->rxiov || !l->rxaddr || !l->rxidx || !l->runidx ||
        (cfg->tap_vnet && (!l->vin || !l->coal)) || pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l->txmem); free(l->rxmem); free(l->txv); free(l->rxv); free(l->txp); free(l->rxp);
        free(l->txm); free(l->rxm); free(l->txiov); free(l->rxiov); free(l->rxaddr); free(l->rxidx);
        free(l->runidx); free(l->vin); free(l->coal);
        free(l);
        return IE_S_ENOMEM;
    }
    /* Offloads are a property of the (persistent) tap, not of this fd: a previous vnet reader may
     * have left TSO on, which would hand a plain reader frames larger than max_frame.  Set them
     * either way (refused by an old kernel: plain frames still come, behind a header). */
    if (cfg->tap_vnet)
        ioctl(cfg->tap_fd, TUNSETOFFLOAD, (unsigned long)TAP_OFFLOADS);
    else
        ioctl(cfg->tap_fd, TUNSETOFFLOAD, 0UL);  /* not a tap (tests use sockets): ENOTTY, harmless */
    atomic_init(&l->stop, 0);
    *loop = l;
    return IE_S_OK;
}

void ie_mloop_free(ie_mloop *l)
{
    if (!l)
        return;
    pthread_mutex_destroy(&l->mu);
    free(l->txmem);
    free(l->rxmem);
    free(l->txv);
    free(l->rxv);
    free(l->txp);
    free(l->rxp);
    free(l->txm);
    free(l->rxm);
    free(l->txiov);
    free(l->rxiov);
    free(l->rxaddr);
    free(l->rxidx);
    free(l->runidx);
    free(l->vin);
    free(l->coal);
    free(l);
}

void ie_mloop_stop(ie_mloop *l)
{
    atomic_store(&l->stop, 1);
}

void ie_mloop_get_stats(ie_mloop *l, ie_mloop_stats *out)
{
    pthread_mutex_lock(&l->mu);
    *out = l->st;
    pthread_mutex_unlock(&l->mu);
}

ie_macsec_tx *ie_mloop_set_tx(ie_mloop *l, ie_macsec_tx *tx)
{
    ie_macsec_tx *old;

    pthread_mutex_lock(&l->mu);
    old = l->tx;
    l->tx = tx;
    pthread_mutex_unlock(&l->mu);
    return old;  /* the loop no longer touches it: the caller may free it */
}

int ie_mloop_rx_add_sa(ie_mloop *l, const ie_macsec_sa_cfg *sa)
{
    int rc;

    pthread_mutex_lock(&l->mu);
    ie_macsec_rx_remove_sa(l->rx, sa->sci, sa->an);  /* an AN reused for a new SAK replaces it */
    rc = ie_macsec_rx_add_sa(l->rx, sa);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int ie_mloop_rx_remove_sa(ie_mloop *l, uint64_t sci, uint8_t an)
{
    int rc;

    pthread_mutex_lock(&l->mu);
    rc = ie_macsec_rx_remove_sa(l->rx, sci, an);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

int ie_mloop_rx_sa_counters(ie_mloop *l, uint64_t sci, uint8_t an, ie_counters *out)
{
    int rc;

    pthread_mutex_lock(&l->mu);
    rc = ie_macsec_rx_sa_counters(l->rx, sci, an, out);
    pthread_mutex_unlock(&l->mu);
    return rc;
}

/* ---- vnet tap, read side: finish checksums, cut TCP super-packets (TSO) into frames ---- */

static uint64_t csum_acc(const uint8_t *p, size_t len, uint64_t sum)
{
    uint32_t w;

    for (; len >= 4; p += 4, len -= 4) {  /* 32-bit big-endian words fold to the same 16-bit sum */
        memcpy(&w, p, 4);
        sum += ntohl(w);
    }
    if (len >= 2) {
        sum += (uint32_t)p[0] << 8 | p[1];
        p += 2;
        len -= 2;
    }
    if (len)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint16_t fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_csum(uint8_t *at, uint64_t sum)
{
    put16(at, (uint16_t)~fold(sum));
}

/* Length of the Ethernet header with any VLAN tags (0 when the frame is too short for it). */
static uint32_t l2_len(const uint8_t *f, uint32_t len)
{
    uint32_t o = 12;

    while (o + 2 <= len && ((f[o] == 0x81 && f[o + 1] == 0x00) || (f[o] == 0x88 && f[o + 1] == 0xA8)))
        o += 4;
    return o + 2 <= len ? o + 2 : 0;
}

/* A read super-packet (in l->vin): check its headers, remember where the segments come from.
 * Returns 0 when it cannot be cut (the caller counts a drop). */
static int tso_start(ie_mloop *l, uint32_t flen, const struct virtio_net_hdr *h)
{
    const uint8_t *f = l->vin + VNET_LEN, *ip, *tcp;
    uint32_t type = h->gso_type & ~VIRTIO_NET_HDR_GSO_ECN, ipo = l2_len(f, flen), iphl, thl;

    if (!ipo)
        return 0;
    ip = f + ipo;
    if (type == VIRTIO_NET_HDR_GSO_TCPV4 && flen >= ipo + 20 && ip[0] >> 4 == 4 && ip[9] == 6 &&
        f[ipo - 2] == 0x08 && f[ipo - 1] == 0x00) {
        iphl = (uint32_t)(ip[0] & 15) * 4;
        l->tso_v6 = 0;
        l->tso_id = (uint16_t)(ip[4] << 8 | ip[5]);
    } else if (type == VIRTIO_NET_HDR_GSO_TCPV6 && flen >= ipo + 40 && ip[0] >> 4 == 6 && ip[6] == 6 &&
               f[ipo - 2] == 0x86 && f[ipo - 1] == 0xDD) {
        iphl = 40;  /* extension headers: not cut here (dropped) */
        l->tso_v6 = 1;
    } else {
        return 0;
    }
    if (iphl < 20 || ipo + iphl + 20 > flen)
        return 0;
    tcp = ip + iphl;
    thl = (uint32_t)(tcp[12] >> 4) * 4;
    if (thl < 20 || ipo + iphl + thl >= flen || !h->gso_size || ipo + iphl + thl + h->gso_size > l->cfg.max_frame)
        return 0;
    l->tso_len = flen;
    l->tso_ipo = ipo;
    l->tso_tcpo = ipo + iphl;
    l->tso_hlen = ipo + iphl + thl;
    l->tso_mss = h->gso_size;
    l->tso_off = l->tso_hlen;
    l->tso_seg = 0;
    l->tso_seq = (uint32_t)tcp[4] << 24 | (uint32_t)tcp[5] << 16 | (uint32_t)tcp[6] << 8 | tcp[7];
    l->tso_active = 1;
    return 1;
}

/* The next segment of the super-packet as a complete frame at out; returns its length. */
static uint32_t tso_next(ie_mloop *l, uint8_t *out)
{
    const uint8_t *f = l->vin + VNET_LEN;
    uint32_t hl = l->tso_hlen, rest = l->tso_len - l->tso_off;
    uint32_t chunk = rest < l->tso_mss ? rest : l->tso_mss, flen = hl + chunk, tlen = flen - l->tso_tcpo;
    uint8_t *ip = out + l->tso_ipo, *tcp = out + l->tso_tcpo;
    uint32_t seq = l->tso_seq + (l->tso_off - hl);
    uint64_t sum;

    memcpy(out, f, hl);
    memcpy(out + hl, f + l->tso_off, chunk);
    if (!l->tso_v6) {
        put16(ip + 2, flen - l->tso_ipo);
        put16(ip + 4, (uint16_t)(l->tso_id + l->tso_seg));
        ip[10] = ip[11] = 0;
        put_csum(ip + 10, csum_acc(ip, l->tso_tcpo - l->tso_ipo, 0));
        sum = csum_acc(ip + 12, 8, 0);  /* pseudo header: addresses */
    } else {
        put16(ip + 4, tlen);
        sum = csum_acc(ip + 8, 32, 0);
    }
    tcp[4] = (uint8_t)(seq >> 24);
    tcp[5] = (uint8_t)(seq >> 16);
    tcp[6] = (uint8_t)(seq >> 8);
    tcp[7] = (uint8_t)seq;
    if (chunk < rest)
        tcp[13] &= (uint8_t)~0x09;  /* FIN, PSH: last segment only */
    if (l->tso_seg)
        tcp[13] &= (uint8_t)~0x80;  /* CWR: first segment only */
    tcp[16] = tcp[17] = 0;
    put_csum(tcp + 16, csum_acc(tcp, tlen, sum + 6 + tlen));
    l->tso_off += chunk;
    l->tso_seg++;
    l->tso_active = l->tso_off < l->tso_len;
    return flen;
}

/* The next frame from a vnet tap into out (max_frame + 1 bytes of room): a plain frame with its
 * checksum finished if the kernel left that to us, or the next segment of a super-packet.
 * Returns its length, 0 when the tap is empty, or -1 for a frame dropped (counted). */
static int64_t tap_read_vnet(ie_mloop *l, uint8_t *out)
{
    struct virtio_net_hdr h;
    ssize_t r;
    uint32_t flen;

    if (l->tso_active) {
        l->st.tap_rx++;
        return tso_next(l, out);
    }
    r = read(l->cfg.tap_fd, l->vin, VNET_BUF);
    if (r <= 0)
        return 0;
    if (r <= VNET_LEN) {
        l->st.tap_rx++;
        l->st.protect_drop++;
        return -1;
    }
    memcpy(&h, l->vin, sizeof h);
    flen = (uint32_t)r - VNET_LEN;
    if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
        l->st.tap_tso++;
        if (!tso_start(l, flen, &h)) {
            l->st.tap_rx++;
            l->st.protect_drop++;
        }
        return -1;  /* nothing in out yet: the segments follow */
    }
    l->st.tap_rx++;
    if (flen > l->cfg.max_frame || ((h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) &&
                                    (uint32_t)h.csum_start + h.csum_offset + 2 > flen)) {
        l->st.protect_drop++;
        return -1;
    }
    memcpy(out, l->vin + VNET_LEN, flen);
    if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)  /* the field holds the pseudo-header sum */
        put_csum(out + h.csum_start + h.csum_offset, csum_acc(out + h.csum_start, flen - h.csum_start, 0));
    return flen;
}

/* tap -> protect -> one sendmmsg on the phy.  Called with mu held.  Returns frames read. */
static int tap_to_phy(ie_mloop *l)
{
    uint32_t n = 0, i, k = 0, reads = 0;

    while (n < l->cfg.batch) {
        ie_pkt *p = &l->txp[n];
        uint8_t *buf = l->txmem + (size_t)n * l->stride;
        ssize_t r;
        if (l->vin) {
            int64_t v = tap_read_vnet(l, buf + HEAD);
            if (!v)
                break;
            reads++;
            if (v < 0)
                continue;
            r = (ssize_t)v;
        } else {
            /* one byte more than max_frame (the tailroom has it) tells an oversized frame apart */
            r = read(l->cfg.tap_fd, buf + HEAD, (size_t)l->cfg.max_frame + 1);
            if (r <= 0)
                break;
            reads++;
            l->st.tap_rx++;
            if ((size_t)r > l->cfg.max_frame) {
                l->st.protect_drop++;
                continue;
            }
        }
        memset(p, 0, sizeof *p);
        p->buf = buf;
        p->off = HEAD;
        p->len = (uint32_t)r;
        p->cap = l->stride;
        if (l->tagb && r >= 14) {  /* DA | SA | tag(s) | original EtherType ... */
            memmove(buf + HEAD - l->tagb, buf + HEAD, 12);
            memcpy(buf + HEAD - l->tagb + 12, l->tags, l->tagb);
            p->off -= l->tagb;
            p->len += l->tagb;
        }
        n++;
    }
    if (!n)
        return (int)reads;
    if (!l->tx) {  /* MKA has not converged yet: nothing leaves in clear */
        l->st.no_tx_sa += n;
        return (int)reads;
    }
    ie_macsec_protect(l->tx, l->txp, n, l->txv);
    for (i = 0; i < n; i++) {
        if (l->txv[i] != IE_OK) {
            l->st.protect_drop++;
            continue;
        }
        l->txiov[k].iov_base = l->txp[i].buf + l->txp[i].off;
        l->txiov[k].iov_len = l->txp[i].len;
        memset(&l->txm[k], 0, sizeof l->txm[k]);
        l->txm[k].msg_hdr.msg_iov = &l->txiov[k];
        l->txm[k].msg_hdr.msg_iovlen = 1;
        k++;
    }
    for (i = 0; i < k;) {
        int s = sendmmsg(l->cfg.phy_fd, l->txm + i, k - i, 0);
        if (s <= 0) {
            if (s < 0 && errno == EINTR)
                continue;
            l->st.send_errors += k - i;  /* a full socket buffer drops, like a NIC queue would */
            break;
        }
        l->st.phy_tx += (uint64_t)s;
        i += (uint32_t)s;
    }
    return (int)reads;
}

/* ---- vnet tap, write side: consecutive segments of one TCP flow go up as one super-packet
 * (userspace GRO), so the node's TCP sees a few big frames ---- */

typedef struct tcp_seg {
    uint8_t *p;
    uint32_t len, iphl, hl, seq;  /* iphl, hl: from the start of the frame (Ethernet included) */
} tcp_seg;

#define ETH_HL 14

/* A plain TCP data segment that may be coalesced: untagged Ethernet, IPv4 without options or
 * fragments or IPv6 straight to TCP, flags ACK (+PSH) only, some payload. */
static int tcp_seg_parse(uint8_t *f, uint32_t len, tcp_seg *s)
{
    uint8_t *p = f + ETH_HL;
    uint32_t iplen, iphl, thl;
    const uint8_t *t;

    if (len < ETH_HL + 40)
        return 0;
    iplen = len - ETH_HL;
    if (f[12] == 0x08 && f[13] == 0x00 && p[0] == 0x45) {
        iphl = 20;
        if (p[9] != 6 || (p[6] & 0x3f) || p[7] || ((uint32_t)p[2] << 8 | p[3]) != iplen)
            return 0;
    } else if (f[12] == 0x86 && f[13] == 0xDD && iplen >= 60 && p[0] >> 4 == 6) {
        iphl = 40;
        if (p[6] != 6 || ((uint32_t)p[4] << 8 | p[5]) + 40 != iplen)
            return 0;
    } else {
        return 0;
    }
    t = p + iphl;
    thl = (uint32_t)(t[12] >> 4) * 4;
    if (thl < 20 || iphl + thl >= iplen || (t[13] & ~0x08) != 0x10)
        return 0;
    s->p = f;
    s->len = len;
    s->iphl = ETH_HL + iphl;
    s->hl = ETH_HL + iphl + thl;
    s->seq = (uint32_t)t[4] << 24 | (uint32_t)t[5] << 16 | (uint32_t)t[6] << 8 | t[7];
    return 1;
}

/* Same flow and the same headers apart from lengths, IDs, checksums, sequence number, PSH. */
static int tcp_same_flow(const tcp_seg *a, const tcp_seg *b)
{
    const uint8_t *x = a->p + ETH_HL, *y = b->p + ETH_HL, *tx = a->p + a->iphl, *ty = b->p + b->iphl;

    if (a->iphl != b->iphl || a->hl != b->hl || memcmp(a->p, b->p, ETH_HL))
        return 0;
    if (a->iphl == ETH_HL + 20 ? (x[1] != y[1] || x[6] != y[6] || x[8] != y[8] || memcmp(x + 12, y + 12, 8))
                               : (memcmp(x, y, 4) || x[7] != y[7] || memcmp(x + 8, y + 8, 32)))
        return 0;
    /* ports, ack, window, options */
    return !memcmp(tx, ty, 4) && !memcmp(tx + 8, ty + 8, 4) && !memcmp(tx + 14, ty + 14, 2) &&
           !memcmp(tx + 20, ty + 20, a->hl - a->iphl - 20);
}

static void tap_write(ie_mloop *l, uint8_t *d, size_t len, uint32_t frames)
{
    if (write(l->cfg.tap_fd, d, len) < 0)
        l->st.tap_tx_errors += frames;
    else
        l->st.validated += frames;
}

/* One frame behind a zero vnet header, in place (RX_OFF left room for it). */
static void tap_write_plain(ie_mloop *l, ie_pkt *p)
{
    uint8_t *d = p->buf + p->off - VNET_LEN;

    memset(d, 0, VNET_LEN);
    tap_write(l, d, p->len + VNET_LEN, 1);
}

/* Write the run of coalescible frames (rxp indices l->runidx[0..n)). */
static void run_flush(ie_mloop *l, uint32_t n)
{
    struct virtio_net_hdr h;
    tcp_seg first = {0}, s = {0};
    uint8_t *out = l->coal + VNET_LEN, *ip = out + ETH_HL, *tcp;
    uint32_t i, off, mss;
    uint64_t sum;

    if (!n)
        return;
    if (n == 1) {
        tap_write_plain(l, &l->rxp[l->runidx[0]]);
        return;
    }
    tcp_seg_parse(l->rxp[l->runidx[0]].buf + l->rxp[l->runidx[0]].off, l->rxp[l->runidx[0]].len, &first);
    memcpy(out, first.p, first.hl);
    mss = first.len - first.hl;
    for (i = 0, off = first.hl; i < n; i++) {
        ie_pkt *p = &l->rxp[l->runidx[i]];
        tcp_seg_parse(p->buf + p->off, p->len, &s);
        memcpy(out + off, s.p + s.hl, s.len - s.hl);
        off += s.len - s.hl;
    }
    tcp = out + first.iphl;
    tcp[13] |= s.p[first.iphl + 13] & 0x08;  /* PSH of the last segment */
    if (first.iphl == ETH_HL + 20) {
        put16(ip + 2, off - ETH_HL);
        ip[10] = ip[11] = 0;
        put_csum(ip + 10, csum_acc(ip, 20, 0));
        sum = csum_acc(ip + 12, 8, 0);
    } else {
        put16(ip + 4, off - first.iphl);
        sum = csum_acc(ip + 8, 32, 0);
    }
    /* CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, the kernel does the rest */
    put16(tcp + 16, fold(sum + 6 + (off - first.iphl)));
    memset(&h, 0, sizeof h);
    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h.gso_type = first.iphl == ETH_HL + 20 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
    h.hdr_len = (uint16_t)first.hl;
    h.gso_size = (uint16_t)mss;
    h.csum_start = (uint16_t)first.iphl;
    h.csum_offset = 16;
    memcpy(l->coal, &h, sizeof h);
    l->st.tap_gro++;
    tap_write(l, l->coal, VNET_LEN + off, n);
}

/* Write the k validated frames (rxp[i] with DELIVER set) to a vnet tap, coalescing runs. */
static void tap_write_vnet(ie_mloop *l, uint32_t k)
{
    uint32_t i, n = 0, total = 0, mss = 0, next = 0;
    tcp_seg first = {0}, s;
    int open = 0;

    for (i = 0; i < k; i++) {
        ie_pkt *p = &l->rxp[i];
        if (!(p->flags & IE_PKT_DELIVER))
            continue;
        if (!tcp_seg_parse(p->buf + p->off, p->len, &s)) {
            run_flush(l, n);  /* keep the order: what came before goes first */
            n = 0;
            open = 0;
            tap_write_plain(l, p);
            continue;
        }
        if (open && s.seq == next && s.len - s.hl <= mss && total + (s.len - s.hl) <= GRO_MAX &&
            n < GRO_SEGS && tcp_same_flow(&first, &s)) {
            l->runidx[n++] = i;
            total += s.len - s.hl;
            next += s.len - s.hl;
            /* only the last segment may be short or carry PSH */
            open = s.len - s.hl == mss && !(s.p[s.iphl + 13] & 0x08);
            continue;
        }
        run_flush(l, n);
        first = s;
        mss = s.len - s.hl;
        total = first.hl + mss;
        next = s.seq + mss;
        l->runidx[0] = i;
        n = 1;
        open = !(s.p[s.iphl + 13] & 0x08);
    }
    run_flush(l, n);
}

/* one recvmmsg on the phy -> classify -> validate -> tap.  Called with mu held. */
static int phy_to_tap(ie_mloop *l)
{
    uint32_t n = l->cfg.batch, i, k = 0;
    int r;

    for (i = 0; i < n; i++) {
        l->rxiov[i].iov_base = l->rxmem + (size_t)i * l->stride + RX_OFF;
        l->rxiov[i].iov_len = l->stride - RX_OFF;
        memset(&l->rxm[i], 0, sizeof l->rxm[i]);
        l->rxm[i].msg_hdr.msg_iov = &l->rxiov[i];
        l->rxm[i].msg_hdr.msg_iovlen = 1;
        l->rxm[i].msg_hdr.msg_name = &l->rxaddr[i];
        l->rxm[i].msg_hdr.msg_namelen = sizeof l->rxaddr[i];
    }
    r = recvmmsg(l->cfg.phy_fd, l->rxm, n, MSG_DONTWAIT, NULL);
    if (r <= 0)
        return 0;
    for (i = 0; i < (uint32_t)r; i++) {
        uint8_t *d = l->rxiov[i].iov_base;
        uint32_t len = l->rxm[i].msg_len;
        uint16_t type;
        const struct sockaddr_ll *sll = &l->rxaddr[i];

        if (l->rxm[i].msg_hdr.msg_namelen >= sizeof *sll && sll->sll_family == AF_PACKET &&
            sll->sll_pkttype == PACKET_OUTGOING)
            continue;  /* our own transmissions, seen by an ETH_P_ALL socket */
        l->st.phy_rx++;
        if ((l->rxm[i].msg_hdr.msg_flags & MSG_TRUNC) || len < 14) {
            l->st.validate_drop++;
            continue;
        }
        type = (uint16_t)(d[12] << 8 | d[13]);
        if (type == ETH_EAPOL) {
            l->st.eapol++;  /* MKA has its own socket in the control plane */
            continue;
        }
        if (type != ETH_MACSEC) {
            if (l->cfg.validate == IE_VALIDATE_STRICT) {
                l->st.unprotected_drop++;
                continue;
            }
            if (l->vin) {
                memset(d - VNET_LEN, 0, VNET_LEN);
                d -= VNET_LEN;
                len += VNET_LEN;
            }
            if (write(l->cfg.tap_fd, d, len) < 0)
                l->st.tap_tx_errors++;
            else
                l->st.unprotected_pass++;
            continue;
        }
        memset(&l->rxp[k], 0, sizeof l->rxp[k]);
        l->rxp[k].buf = d - RX_OFF;
        l->rxp[k].off = RX_OFF;
        l->rxp[k].len = len;
        l->rxp[k].cap = l->stride;
        l->rxidx[k++] = i;
    }
    if (k) {
        ie_macsec_validate(l->rx, l->rxp, k, l->rxv);
        for (i = 0; i < k; i++) {
            if (!(l->rxp[i].flags & IE_PKT_DELIVER)) {
                l->st.validate_drop++;
                continue;
            }
            if (l->tagb) {
                uint8_t *f = l->rxp[i].buf + l->rxp[i].off;
                /* compare TPIDs and VIDs (PCP/DEI bits are the sender's business) */
                int ok = l->rxp[i].len >= 14 + l->tagb;
                uint32_t j;
                for (j = 0; ok && j < l->tagb; j += 4)
                    ok = f[12 + j] == l->tags[j] && f[13 + j] == l->tags[j + 1] &&
                         (f[14 + j] & 0x0F) == l->tags[j + 2] && f[15 + j] == l->tags[j + 3];
                if (!ok) {
                    l->st.vlan_drop++;
                    l->rxp[i].flags &= (uint8_t)~IE_PKT_DELIVER;
                    continue;
                }
                memmove(f + l->tagb, f, 12);
                l->rxp[i].off += l->tagb;
                l->rxp[i].len -= l->tagb;
            }
            if (!l->vin)
                tap_write(l, l->rxp[i].buf + l->rxp[i].off, l->rxp[i].len, 1);
        }
        if (l->vin)
            tap_write_vnet(l, k);
    }
    return r;
}

int ie_mloop_step(ie_mloop *l, int timeout_ms)
{
    struct pollfd pfd[2] = {{.fd = l->cfg.tap_fd, .events = POLLIN}, {.fd = l->cfg.phy_fd, .events = POLLIN}};
    /* segments of a super-packet still waiting: do not sleep, and send them on */
    int r = poll(pfd, 2, l->tso_active ? 0 : timeout_ms), done = 0;

    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    if (pfd[0].revents & (POLLERR | POLLNVAL) || pfd[1].revents & (POLLERR | POLLNVAL))
        return -EBADF;
    pthread_mutex_lock(&l->mu);
    if (pfd[0].revents & POLLIN || l->tso_active)
        done += tap_to_phy(l);
    if (pfd[1].revents & POLLIN)
        done += phy_to_tap(l);
    if (done)
        l->st.batches++;
    pthread_mutex_unlock(&l->mu);
    return done;
}

int ie_mloop_run(ie_mloop *l)
{
    while (!atomic_load(&l->stop)) {
        int r = ie_mloop_step(l, l->cfg.poll_ms > 0 ? l->cfg.poll_ms : 100);
        if (r < 0)
            return r;
    }
    atomic_store(&l->stop, 0);
    return 0;
}
