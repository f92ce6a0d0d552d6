/* fuzz_mloop.c - the MACsec link loop's receive paths through its I/O boundary (loop_io.h),
 * with no devices: AF_PACKET frames (MACsec, EAPOL, other; ours or not; truncated) into
 * validate, VLAN checks and the (vnet or plain) tap, and tap reads (plain frames, vnet
 * super-packets) into protect and sendmmsg.
 *
 * Input: loop flags | macsec cfg | an | max_frame (2) | batch | ops...  Loop flags: bit 0 vnet
 * tap, bits 1-2 tags (none, C-tag, S-tag + C-tag), bit 3 no Tx SA yet.  Each op: kind, then
 *   0 frame: flags (outgoing, trunc, protect), chunk; with protect the chunk is a frame
 *     protected with the SA first (tagged like the loop's own frames when bit 3 is set);
 *   1 tap batch: count, chunks: what the next tap reads return.
 * Oracle: every tap write of a super-packet has a consistent virtio header and IP length. */
#include <errno.h>
#include <stdio.h>

#include "fuzz.h"
#include "loop_io.h"
#include "offload.h"

#define MAX_OPS 24
#define MAX_READS 16

static const uint8_t *reads[MAX_READS];
static size_t read_len[MAX_READS];
static uint32_t nreads, next_read;
static int vnet;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "mloop oracle: %s\n", what);
        abort();
    }
}

static ssize_t fz_read(int fd, void *buf, size_t len)
{
    size_t n;

    (void)fd;
    if (next_read >= nreads) {
        errno = EAGAIN;
        return -1;
    }
    n = read_len[next_read] < len ? read_len[next_read] : len;
    memcpy(buf, reads[next_read++], n);
    return (ssize_t)n;
}

static ssize_t fz_write(int fd, const void *buf, size_t len)
{
    const uint8_t *d = buf;
    struct virtio_net_hdr h;

    (void)fd;
    fz_touch(d, len);
    if (vnet) {
        check(len >= IE_VNET_LEN, "tap write shorter than a virtio header");
        memcpy(&h, d, sizeof h);
        if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
            check(h.hdr_len < len - IE_VNET_LEN && h.gso_size > 0, "virtio header");
            if (h.gso_type == VIRTIO_NET_HDR_GSO_TCPV4)
                check(((uint32_t)d[IE_VNET_LEN + 16] << 8 | d[IE_VNET_LEN + 17]) == len - IE_VNET_LEN - 14,
                      "IPv4 length");
        }
    }
    return (ssize_t)len;
}

static int fz_sendmmsg(int fd, struct mmsghdr *m, unsigned int n, int flags)
{
    unsigned int i;
    size_t j;

    (void)fd;
    (void)flags;
    for (i = 0; i < n; i++)
        for (j = 0; j < m[i].msg_hdr.msg_iovlen; j++)
            fz_touch(m[i].msg_hdr.msg_iov[j].iov_base, m[i].msg_hdr.msg_iov[j].iov_len);
    return (int)n;
}

static ssize_t fz_sendmsg(int fd, const struct msghdr *m, int flags)
{
    (void)fd;
    (void)m;
    (void)flags;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size};
    uint8_t flags = fz_u8(&f), mcfg = fz_u8(&f), an = fz_u8(&f);
    ie_io io = {fz_read, fz_write, fz_sendmmsg, fz_sendmsg};
    ie_mloop_cfg cfg;
    ie_secy_cfg secy;
    ie_macsec_sa_cfg sa;
    ie_macsec_rx *rx = NULL;
    ie_macsec_tx *tx = NULL, *ptx = NULL;
    ie_mloop *l = NULL;
    uint8_t *frames[MAX_OPS], tags[8] = {0x88, 0xA8, 0x00, 0x64, 0x81, 0x00, 0x00, 0xC8};
    uint32_t nframes = 0, ops, k = 0, i, tagb;

    fuzz_macsec_cfg(mcfg, an, &secy, &sa);
    memset(&cfg, 0, sizeof cfg);
    cfg.tap_fd = cfg.phy_fd = 100;
    cfg.batch = 1;
    cfg.max_frame = 60 + fz_u16(&f) % 9000;
    cfg.batch = 1 + fz_u8(&f) % 32;
    cfg.validate = secy.validate;
    cfg.tap_vnet = vnet = flags & 1;
    tagb = ((flags >> 1) & 3) == 1 ? 4 : ((flags >> 1) & 3) >= 2 ? 8 : 0;
    cfg.ctag = tagb ? 200 : 0;
    cfg.stag = tagb == 8 ? 100 : 0;
    nreads = next_read = 0;
    if (ie_macsec_rx_new(&secy, &rx) || ie_macsec_rx_add_sa(rx, &sa) || ie_macsec_tx_new(&secy, &sa, &tx) ||
        ie_macsec_tx_new(&secy, &sa, &ptx) || ie_mloop_new_io(&cfg, rx, &io, &l))
        goto done;
    if (!(flags & 8))
        ie_mloop_set_tx(l, tx);
    for (ops = 0; ops < MAX_OPS && f.n; ops++) {
        if (fz_u8(&f) & 1) {  /* tap batch */
            uint32_t count = 1 + fz_u8(&f) % MAX_READS;
            nreads = next_read = 0;
            while (nreads < count && f.n) {
                reads[nreads] = fz_chunk(&f, &read_len[nreads]);
                nreads++;
            }
            ie_mloop_tap_batch(l);
            while (next_read < nreads)
                if (ie_mloop_tap_batch(l) == 0)
                    break;
            nreads = next_read = 0;
        } else {
            uint8_t ff = fz_u8(&f);
            size_t len;
            const uint8_t *d = fz_chunk(&f, &len);
            uint32_t cap = IE_MLOOP_RX_OFF + (uint32_t)len + IE_MACSEC_HEADROOM + IE_MACSEC_TAILROOM + 8;
            uint8_t *buf = malloc(cap), *fr = buf + IE_MLOOP_RX_OFF;
            memcpy(fr, d, len);
            if ((ff & 4) && len >= 14) {  /* protect it as the peer would */
                ie_pkt p = {.buf = buf, .off = IE_MLOOP_RX_OFF + IE_MACSEC_HEADROOM, .len = (uint32_t)len, .cap = cap};
                uint8_t v;
                memmove(buf + p.off, fr, len);
                if ((ff & 8) && tagb) {
                    memmove(buf + p.off - tagb, buf + p.off, 12);
                    memcpy(buf + p.off - tagb + 12, tags + (tagb == 4 ? 4 : 0), tagb);
                    p.off -= tagb;
                    p.len += tagb;
                }
                ie_macsec_protect(ptx, &p, 1, &v);
                if (v == IE_OK) {
                    memmove(fr, p.buf + p.off, p.len);
                    len = p.len;
                }
            }
            frames[nframes++] = buf;
            ie_mloop_rx_frame(l, buf, (uint32_t)len, cap, ff & 1, ff & 2, &k);
        }
    }
    ie_mloop_rx_end(l, k);
done:
    for (i = 0; i < nframes; i++)
        free(frames[i]);
    ie_mloop_free(l);
    ie_macsec_tx_free(tx);
    ie_macsec_tx_free(ptx);
    ie_macsec_rx_free(rx);
    return 0;
}
