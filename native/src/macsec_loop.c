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
#include "loop_io.h"
#include "offload.h"

#define ETH_MACSEC 0x88E5
#define ETH_EAPOL 0x888E
#define TAG_ROOM 8          /* up to two VLAN tags inserted in front of the frame */
#define HEAD (IE_MACSEC_HEADROOM + TAG_ROOM)
#define VNET_LEN IE_VNET_LEN
#define RX_OFF IE_MLOOP_RX_OFF /* received frames start here: room for a vnet header on the way up */
#define VNET_BUF (65536 + VNET_LEN)
#define ETH_HL 14           /* coalesced frames: untagged Ethernet */
#define TAP_OFFLOADS (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)

struct ie_mloop {
    ie_mloop_cfg cfg;
    ie_io io;                /* libc, or a test's/fuzzer's stand-in (loop_io.h) */
    ie_devout tap;           /* writes of validated frames to the tap, counted in st */
    ie_macsec_tx *tx;        /* borrowed; NULL until MKA installs one */
    ie_macsec_rx *rx;        /* borrowed */
    pthread_mutex_t mu;      /* guards tx, rx's SA table and st against the control thread */
    atomic_int stop;
    ie_mloop_stats st;
    uint32_t stride;
    uint32_t tagb;           /* bytes of VLAN tags: 0, 4 or 8 */
    uint8_t tags[TAG_ROOM];  /* the tag(s) as they go on the wire */
    ie_batch b;              /* tx/rx slots, verdicts, packets, messages */
    struct sockaddr_ll *rxaddr;
    /* vnet tap: vin holds a read (vnet header + frame, maybe a TCP super-packet cut here one
     * segment per slot, maybe across batches); coal the coalesced frame being written */
    uint8_t *vin, *coal;
    ie_tso tso;              /* the super-packet in vin being cut */
    ie_gro tcpgro;           /* the run of validated segments being coalesced (rxp indices) */
};

static const ie_io libc_io = {read, write, sendmmsg, sendmsg};

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) >= 0;
}

/* Everything but the devices: checks cfg, allocates the buffers. */
static int mloop_alloc(const ie_mloop_cfg *cfg, ie_macsec_rx *rx, const ie_io *io, ie_mloop **loop)
{
    ie_mloop *l;
    uint32_t n;

    *loop = NULL;
    if (!cfg || !rx || cfg->batch == 0 || cfg->batch > IE_LOOP_MAX_BATCH || cfg->max_frame < 60 ||
        cfg->max_frame > 65535 || cfg->stag > 4094 || cfg->ctag > 4094 || (cfg->stag && !cfg->ctag))
        return IE_S_EINVAL;
    l = calloc(1, sizeof *l);
    if (!l)
        return IE_S_ENOMEM;
    l->cfg = *cfg;
    l->rx = rx;
    l->io = *io;
    l->tap = (ie_devout){&l->io, cfg->tap_fd, &l->st.validated, &l->st.tap_tx_errors};
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
    l->rxaddr = calloc(n, sizeof *l->rxaddr);
    l->vin = cfg->tap_vnet ? malloc(VNET_BUF) : NULL;
    l->coal = cfg->tap_vnet ? malloc(VNET_BUF) : NULL;
    if (!ie_batch_init(&l->b, n, l->stride, l->stride) || !l->rxaddr ||
        (cfg->tap_vnet && (!l->vin || !l->coal)) || pthread_mutex_init(&l->mu, NULL) != 0) {
        ie_batch_free(&l->b);
        free(l->rxaddr);
        free(l->vin);
        free(l->coal);
        free(l);
        return IE_S_ENOMEM;
    }
    atomic_init(&l->stop, 0);
    *loop = l;
    return IE_S_OK;
}

int ie_mloop_new_io(const ie_mloop_cfg *cfg, ie_macsec_rx *rx, const ie_io *io, ie_mloop **loop)
{
    *loop = NULL;
    return io ? mloop_alloc(cfg, rx, io, loop) : IE_S_EINVAL;
}

int ie_mloop_new(const ie_mloop_cfg *cfg, ie_macsec_rx *rx, ie_mloop **loop)
{
    int rc;

    *loop = NULL;
    if (!cfg || cfg->tap_fd < 0 || cfg->phy_fd < 0)
        return IE_S_EINVAL;
    if (!ie_vnet_matches(cfg->tap_fd, cfg->tap_vnet))  /* a vnet header exactly when the tap has one */
        return IE_S_EINVAL;
    /* batch reads stop at EAGAIN */
    if (!set_nonblock(cfg->tap_fd) || !set_nonblock(cfg->phy_fd))
        return IE_S_EINVAL;
    rc = mloop_alloc(cfg, rx, &libc_io, loop);
    if (rc != IE_S_OK)
        return rc;
    /* Offloads are a property of the (persistent) tap, not of this fd: a previous vnet reader may
     * have left TSO on, which would hand a plain reader frames larger than max_frame.  Set them
     * either way (refused by an old kernel: plain frames still come, behind a header). */
    if (cfg->tap_vnet)
        ioctl(cfg->tap_fd, TUNSETOFFLOAD, (unsigned long)TAP_OFFLOADS);
    else
        ioctl(cfg->tap_fd, TUNSETOFFLOAD, 0UL);  /* not a tap (tests use sockets): ENOTTY, harmless */
    return IE_S_OK;
}

void ie_mloop_free(ie_mloop *l)
{
    if (!l)
        return;
    pthread_mutex_destroy(&l->mu);
    ie_batch_free(&l->b);
    free(l->rxaddr);
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

/* Length of the Ethernet header with any VLAN tags (0 when the frame is too short for it). */
static uint32_t l2_len(const uint8_t *f, uint32_t len)
{
    uint32_t o = 12;

    while (o + 2 <= len && ((f[o] == 0x81 && f[o + 1] == 0x00) || (f[o] == 0x88 && f[o + 1] == 0xA8)))
        o += 4;
    return o + 2 <= len ? o + 2 : 0;
}

/* The next frame from a vnet tap into out (max_frame + 1 bytes of room): a plain frame with its
 * checksum finished if the kernel left that to us, or the next segment of a super-packet.
 * Returns its length, 0 when the tap is empty, or -1 for a frame dropped (counted). */
static int64_t tap_read_vnet(ie_mloop *l, uint8_t *out)
{
    struct virtio_net_hdr h;
    ssize_t r;
    uint32_t flen;

    if (l->tso.active) {
        l->st.tap_rx++;
        return ie_tso_next(&l->tso, out);
    }
    r = l->io.read(l->cfg.tap_fd, l->vin, VNET_BUF);
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
        uint32_t ipo = l2_len(l->vin + VNET_LEN, flen);
        if (!ipo || !ie_tso_start(&l->tso, l->vin + VNET_LEN, flen, ipo, &h, l->cfg.max_frame)) {
            l->st.tap_rx++;
            l->st.protect_drop++;
        }
        return -1;  /* nothing in out yet: the segments follow */
    }
    l->st.tap_rx++;
    if (flen > l->cfg.max_frame) {
        l->st.protect_drop++;
        return -1;
    }
    memcpy(out, l->vin + VNET_LEN, flen);
    if ((h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && !ie_vnet_finish_csum(out, flen, &h)) {
        l->st.protect_drop++;
        return -1;
    }
    return flen;
}

/* tap -> protect -> one sendmmsg on the phy.  Called with mu held.  Returns frames read. */
static int tap_to_phy(ie_mloop *l)
{
    uint32_t n = 0, i, k = 0, reads = 0;

    while (n < l->cfg.batch) {
        ie_pkt *p = &l->b.txp[n];
        uint8_t *buf = l->b.txmem + (size_t)n * l->stride;
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
            r = l->io.read(l->cfg.tap_fd, buf + HEAD, (size_t)l->cfg.max_frame + 1);
            if (r <= 0)
                break;
            reads++;
            l->st.tap_rx++;
            if ((size_t)r > l->cfg.max_frame) {
                l->st.protect_drop++;
                continue;
            }
        }
        ie_pkt_init(p, buf, HEAD, (uint32_t)r, l->stride);
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
    ie_macsec_protect(l->tx, l->b.txp, n, l->b.txv);
    for (i = 0; i < n; i++) {
        if (l->b.txv[i] != IE_OK) {
            l->st.protect_drop++;
            continue;
        }
        l->b.txiov[k].iov_base = l->b.txp[i].buf + l->b.txp[i].off;
        l->b.txiov[k].iov_len = l->b.txp[i].len;
        memset(&l->b.txm[k], 0, sizeof l->b.txm[k]);
        l->b.txm[k].msg_hdr.msg_iov = &l->b.txiov[k];
        l->b.txm[k].msg_hdr.msg_iovlen = 1;
        k++;
    }
    for (i = 0; i < k;) {
        int s = l->io.sendmmsg(l->cfg.phy_fd, l->b.txm + i, k - i, 0);
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

void ie_mloop_rx_frame(ie_mloop *l, uint8_t *buf, uint32_t len, uint32_t cap, int outgoing, int trunc,
                       uint32_t *k)
{
    uint8_t *d = buf + RX_OFF;
    uint16_t type;

    if (outgoing)
        return;  /* our own transmissions, seen by an ETH_P_ALL socket */
    l->st.phy_rx++;
    if (trunc || len < 14 || cap < RX_OFF || len > cap - RX_OFF) {
        l->st.validate_drop++;
        return;
    }
    type = (uint16_t)(d[12] << 8 | d[13]);
    if (type == ETH_EAPOL) {
        l->st.eapol++;  /* MKA has its own socket in the control plane */
        return;
    }
    if (type != ETH_MACSEC) {
        if (l->cfg.validate == IE_VALIDATE_STRICT) {
            l->st.unprotected_drop++;
            return;
        }
        if (l->vin) {
            memset(d - VNET_LEN, 0, VNET_LEN);
            d -= VNET_LEN;
            len += VNET_LEN;
        }
        if (l->io.write(l->cfg.tap_fd, d, len) < 0)
            l->st.tap_tx_errors++;
        else
            l->st.unprotected_pass++;
        return;
    }
    ie_pkt_init(&l->b.rxp[*k], buf, RX_OFF, len, cap);
    if (++*k == l->cfg.batch) {
        ie_mloop_rx_end(l, *k);
        *k = 0;
    }
}

/* validate the k collected frames, check and strip the VLAN tags, write them to the tap */
void ie_mloop_rx_end(ie_mloop *l, uint32_t k)
{
    uint32_t i;

    if (!k)
        return;
    ie_macsec_validate(l->rx, l->b.rxp, k, l->b.rxv);
    for (i = 0; i < k; i++) {
        if (!(l->b.rxp[i].flags & IE_PKT_DELIVER)) {
            l->st.validate_drop++;
            continue;
        }
        if (l->tagb) {
            uint8_t *f = l->b.rxp[i].buf + l->b.rxp[i].off;
            /* compare TPIDs and VIDs (PCP/DEI bits are the sender's business) */
            int ok = l->b.rxp[i].len >= 14 + l->tagb;
            uint32_t j;
            for (j = 0; ok && j < l->tagb; j += 4)
                ok = f[12 + j] == l->tags[j] && f[13 + j] == l->tags[j + 1] &&
                     (f[14 + j] & 0x0F) == l->tags[j + 2] && f[15 + j] == l->tags[j + 3];
            if (!ok) {
                l->st.vlan_drop++;
                l->b.rxp[i].flags &= (uint8_t)~IE_PKT_DELIVER;
                continue;
            }
            memmove(f + l->tagb, f, 12);
            l->b.rxp[i].off += l->tagb;
            l->b.rxp[i].len -= l->tagb;
        }
        if (!l->vin)
            ie_devout_write(&l->tap, l->b.rxp[i].buf + l->b.rxp[i].off, l->b.rxp[i].len, 1);
    }
    if (l->vin)
        l->st.tap_gro += ie_vnet_deliver(&l->tcpgro, l->coal, l->b.rxp, k, ETH_HL, ie_devout_write, &l->tap);
}

int ie_mloop_tap_batch(ie_mloop *l)
{
    return tap_to_phy(l);
}

/* one recvmmsg on the phy -> classify -> validate -> tap.  Called with mu held. */
static int phy_to_tap(ie_mloop *l)
{
    uint32_t n = l->cfg.batch, i, k = 0;
    int r;

    for (i = 0; i < n; i++) {
        l->b.rxiov[i].iov_base = l->b.rxmem + (size_t)i * l->stride + RX_OFF;
        l->b.rxiov[i].iov_len = l->stride - RX_OFF;
        memset(&l->b.rxm[i], 0, sizeof l->b.rxm[i]);
        l->b.rxm[i].msg_hdr.msg_iov = &l->b.rxiov[i];
        l->b.rxm[i].msg_hdr.msg_iovlen = 1;
        l->b.rxm[i].msg_hdr.msg_name = &l->rxaddr[i];
        l->b.rxm[i].msg_hdr.msg_namelen = sizeof l->rxaddr[i];
    }
    r = recvmmsg(l->cfg.phy_fd, l->b.rxm, n, MSG_DONTWAIT, NULL);
    if (r <= 0)
        return 0;
    for (i = 0; i < (uint32_t)r; i++) {
        const struct sockaddr_ll *sll = &l->rxaddr[i];
        int outgoing = l->b.rxm[i].msg_hdr.msg_namelen >= sizeof *sll && sll->sll_family == AF_PACKET &&
                       sll->sll_pkttype == PACKET_OUTGOING;
        ie_mloop_rx_frame(l, l->b.rxmem + (size_t)i * l->stride, l->b.rxm[i].msg_len, l->stride, outgoing,
                          !!(l->b.rxm[i].msg_hdr.msg_flags & MSG_TRUNC), &k);
    }
    ie_mloop_rx_end(l, k);
    return r;
}

int ie_mloop_step(ie_mloop *l, int timeout_ms)
{
    struct pollfd pfd[2] = {{.fd = l->cfg.tap_fd, .events = POLLIN}, {.fd = l->cfg.phy_fd, .events = POLLIN}};
    /* segments of a super-packet still waiting: do not sleep, and send them on */
    int r = poll(pfd, 2, l->tso.active ? 0 : timeout_ms), done = 0;

    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    if ((pfd[1].revents & (POLLERR | POLLNVAL)) == POLLERR) {
        /* The phy went down (a port flap): the packet socket reports ENETDOWN once and re-attaches
         * by itself when the port comes back up.  Reading SO_ERROR clears it; count it and go on.
         * Anything else (ENODEV: the phy was deleted) ends the loop. */
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(l->cfg.phy_fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err != ENETDOWN && err != 0)
            return -err;
        pthread_mutex_lock(&l->mu);
        l->st.phy_down += err == ENETDOWN;
        pthread_mutex_unlock(&l->mu);
        pfd[1].revents &= (short)~POLLERR;
    }
    if (pfd[0].revents & (POLLERR | POLLNVAL) || pfd[1].revents & (POLLERR | POLLNVAL))
        return -EBADF;
    pthread_mutex_lock(&l->mu);
    done = (pfd[0].revents & POLLIN || l->tso.active ? tap_to_phy(l) : 0) +
           (pfd[1].revents & POLLIN ? phy_to_tap(l) : 0);
    l->st.batches += done > 0;
    pthread_mutex_unlock(&l->mu);
    return done;
}

static int step(void *l, int timeout_ms)
{
    return ie_mloop_step(l, timeout_ms);
}

int ie_mloop_run(ie_mloop *l)
{
    return ie_run_until_stopped(&l->stop, step, l, l->cfg.poll_ms);
}
