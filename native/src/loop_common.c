/* loop_common.c - the plumbing both loops share: batch buffers, the vnet check, counted writes to
 * the tun/tap, the run loop (see loop_io.h). */
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/ioctl.h>

#include "internal.h"
#include "loop_io.h"

int ie_batch_init(ie_batch *b, uint32_t n, size_t txstride, size_t rxstride)
{
    memset(b, 0, sizeof *b);
    b->txmem = malloc(n * txstride);
    b->rxmem = malloc(n * rxstride);
    b->txv = calloc(n, 1);
    b->rxv = calloc(n, 1);
    b->txp = calloc(n, sizeof *b->txp);
    b->rxp = calloc(n, sizeof *b->rxp);
    b->txm = calloc(n, sizeof *b->txm);
    b->rxm = calloc(n, sizeof *b->rxm);
    b->txiov = calloc(n, sizeof *b->txiov);
    b->rxiov = calloc(n, sizeof *b->rxiov);
    return b->txmem && b->rxmem && b->txv && b->rxv && b->txp && b->rxp && b->txm && b->rxm && b->txiov &&
           b->rxiov;
}

void ie_batch_free(ie_batch *b)
{
    free(b->txmem);
    free(b->rxmem);
    free(b->txv);
    free(b->rxv);
    free(b->txp);
    free(b->rxp);
    free(b->txm);
    free(b->rxm);
    free(b->txiov);
    free(b->rxiov);
    memset(b, 0, sizeof *b);
}

int ie_vnet_matches(int fd, int vnet)
{
    struct ifreq ifr;

    memset(&ifr, 0, sizeof ifr);
    if (ioctl(fd, TUNGETIFF, &ifr) != 0)
        return !vnet;
    return !!(ifr.ifr_flags & IFF_VNET_HDR) == !!vnet;
}

void ie_pkt_init(ie_pkt *p, uint8_t *buf, uint32_t off, uint32_t len, uint32_t cap)
{
    memset(p, 0, sizeof *p);
    p->buf = buf;
    p->off = off;
    p->len = len;
    p->cap = cap;
}

void ie_devout_write(void *ctx, uint8_t *d, size_t len, uint32_t pkts)
{
    ie_devout *o = ctx;

    if (d && o->io->write(o->fd, d, len) >= 0)
        *o->ok += pkts;
    else
        *o->errors += pkts;
}

int ie_run_until_stopped(atomic_int *stop, int (*step)(void *ctx, int timeout_ms), void *ctx, int poll_ms)
{
    while (!atomic_load(stop)) {
        int r = step(ctx, poll_ms > 0 ? poll_ms : 100);
        if (r < 0)
            return r;
    }
    atomic_store(stop, 0);
    return 0;
}
