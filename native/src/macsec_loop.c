/* macsec_loop.c - the MACsec link data path: tap <-> SecY <-> AF_PACKET on the phy, in batches, no
 * Python per frame.  SA changes (MKA) come in from another thread under a mutex that the loop holds
 * only while it processes one batch, so a SAK rotation never stops the loop or drops frames. */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

#define ETH_MACSEC 0x88E5
#define ETH_EAPOL 0x888E
#define TAG_ROOM 8          /* up to two VLAN tags inserted in front of the frame */
#define HEAD (IE_MACSEC_HEADROOM + TAG_ROOM)

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
    /* batch reads stop at EAGAIN */
    if (!set_nonblock(cfg->tap_fd) || !set_nonblock(cfg->phy_fd))
        return IE_S_EINVAL;
    l = calloc(1, sizeof *l);
    if (!l)
        return IE_S_ENOMEM;
    l->cfg = *cfg;
    l->rx = rx;
    n = cfg->batch;
    l->stride = HEAD + cfg->max_frame + TAG_ROOM + IE_MACSEC_TAILROOM;
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
    if (!l->txmem || !l->rxmem || !l->txv || !l->rxv || !l->txp || !l->rxp || !l->txm || !l->rxm ||
        !l->txiov || !l->rxiov || !l->rxaddr || !l->rxidx || pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l->txmem); free(l->rxmem); free(l->txv); free(l->rxv); free(l->txp); free(l->rxp);
        free(l->txm); free(l->rxm); free(l->txiov); free(l->rxiov); free(l->rxaddr); free(l->rxidx);
        free(l);
        return IE_S_ENOMEM;
    }
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

/* tap -> protect -> one sendmmsg on the phy.  Called with mu held.  Returns frames read. */
static int tap_to_phy(ie_mloop *l)
{
    uint32_t n = 0, i, k = 0;

    while (n < l->cfg.batch) {
        ie_pkt *p = &l->txp[n];
        uint8_t *buf = l->txmem + (size_t)n * l->stride;
        /* one byte more than max_frame (the tailroom has it) tells an oversized frame apart */
        ssize_t r = read(l->cfg.tap_fd, buf + HEAD, (size_t)l->cfg.max_frame + 1);
        if (r <= 0)
            break;
        l->st.tap_rx++;
        if ((size_t)r > l->cfg.max_frame) {
            l->st.protect_drop++;
            continue;
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
        return 0;
    if (!l->tx) {  /* MKA has not converged yet: nothing leaves in clear */
        l->st.no_tx_sa += n;
        return (int)n;
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
    return (int)n;
}

/* one recvmmsg on the phy -> classify -> validate -> tap.  Called with mu held. */
static int phy_to_tap(ie_mloop *l)
{
    uint32_t n = l->cfg.batch, i, k = 0;
    int r;

    for (i = 0; i < n; i++) {
        l->rxiov[i].iov_base = l->rxmem + (size_t)i * l->stride;
        l->rxiov[i].iov_len = l->stride;
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
            if (write(l->cfg.tap_fd, d, len) < 0)
                l->st.tap_tx_errors++;
            else
                l->st.unprotected_pass++;
            continue;
        }
        memset(&l->rxp[k], 0, sizeof l->rxp[k]);
        l->rxp[k].buf = d;
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
                    continue;
                }
                memmove(f + l->tagb, f, 12);
                l->rxp[i].off += l->tagb;
                l->rxp[i].len -= l->tagb;
            }
            if (write(l->cfg.tap_fd, l->rxp[i].buf + l->rxp[i].off, l->rxp[i].len) < 0)
                l->st.tap_tx_errors++;
            else
                l->st.validated++;
        }
    }
    return r;
}

int ie_mloop_step(ie_mloop *l, int timeout_ms)
{
    struct pollfd pfd[2] = {{.fd = l->cfg.tap_fd, .events = POLLIN}, {.fd = l->cfg.phy_fd, .events = POLLIN}};
    int r = poll(pfd, 2, timeout_ms), done = 0;

    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    if (pfd[0].revents & (POLLERR | POLLNVAL) || pfd[1].revents & (POLLERR | POLLNVAL))
        return -EBADF;
    pthread_mutex_lock(&l->mu);
    if (pfd[0].revents & POLLIN)
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
