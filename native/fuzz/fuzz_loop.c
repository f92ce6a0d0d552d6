/* fuzz_loop.c - the gateway loop's receive paths through its I/O boundary (loop_io.h), with no
 * devices: UDP (or raw ESP) messages and GRO trains into decap and the (vnet or plain) tun, and
 * tun reads (plain packets, vnet super-packets) into encap and sendmmsg.
 *
 * Input: loop flags | esp cfg | batch | ops...  Loop flags: bit 0 vnet tun, 1 UDP GRO, 2 raw
 * ESP, 3 IPv6 peer, 4 UDP GSO.  Each op: kind, then
 *   0 message: seg (2), trunc/encap flags, chunk; with encap the chunk holds (count, chunks) of
 *     inner packets, each encapsulated with the SA and laid end to end (a GRO train when seg is
 *     their common size);
 *   1 tun batch: count, chunks: what the next tun reads return.
 * Oracle: every tun write of a super-packet has a consistent virtio header and IP length. */
#include <errno.h>
#include <netinet/in.h>
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
        fprintf(stderr, "loop oracle: %s\n", what);
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
        check(len >= IE_VNET_LEN, "tun write shorter than a virtio header");
        memcpy(&h, d, sizeof h);
        if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
            check(h.hdr_len < len - IE_VNET_LEN && h.gso_size > 0, "virtio header");
            if (h.gso_type == VIRTIO_NET_HDR_GSO_TCPV4)
                check(((uint32_t)d[IE_VNET_LEN + 2] << 8 | d[IE_VNET_LEN + 3]) == len - IE_VNET_LEN, "IPv4 length");
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
    size_t j, len = 0;

    (void)fd;
    (void)flags;
    for (j = 0; j < m->msg_iovlen; j++) {
        fz_touch(m->msg_iov[j].iov_base, m->msg_iov[j].iov_len);
        len += m->msg_iov[j].iov_len;
    }
    return (ssize_t)len;
}

/* Encapsulate the inner packets of the chunk end to end into a new buffer; returns its length. */
static uint8_t *encap_train(ie_esp_out *out, fz *f, size_t *total, uint32_t *seg)
{
    uint32_t count = 1 + fz_u8(f) % 8, i, common = 0;
    uint8_t *train = malloc(count * (IE_ESP_HEADROOM + 65535 + IE_ESP_TAILROOM)), *at = train;

    for (i = 0; i < count && f->n; i++) {
        size_t len;
        const uint8_t *d = fz_bytes(f, fz_u16(f) % 9000, &len);
        uint8_t buf[IE_ESP_HEADROOM + 9000 + IE_ESP_TAILROOM], v;
        ie_pkt p = {.buf = buf, .off = IE_ESP_HEADROOM, .len = (uint32_t)len, .cap = sizeof buf,
                    .next_header = len && d[0] >> 4 == 6 ? 41 : 4};
        memcpy(buf + IE_ESP_HEADROOM, d, len);
        ie_esp_encap(out, &p, 1, &v);
        if (v != IE_OK)
            continue;
        memcpy(at, p.buf + p.off, p.len);
        at += p.len;
        common = !common || common == p.len ? p.len : UINT32_MAX;
    }
    *total = (size_t)(at - train);
    if (*seg == 1)  /* ask for "the common size" */
        *seg = common == UINT32_MAX ? 0 : common;
    return train;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size};
    uint8_t flags = fz_u8(&f);
    ie_esp_cfg sa = fuzz_esp_cfg(fz_u8(&f)), sa_in;
    ie_io io = {fz_read, fz_write, fz_sendmmsg, fz_sendmsg};
    ie_loop_cfg cfg;
    struct sockaddr_storage from;
    ie_esp_out *out = NULL;
    ie_esp_table *in = ie_esp_table_new();
    ie_loop *l = NULL;
    uint8_t *msgs[MAX_OPS];
    uint32_t nmsgs = 0, ops, k = 0, i;

    memset(&cfg, 0, sizeof cfg);
    cfg.tun_fd = cfg.udp_fd = 100;
    cfg.ike_fd = -1;
    cfg.peer_family = flags & 8 ? 6 : 4;
    cfg.peer_port = 4500;
    cfg.batch = 1 + fz_u8(&f) % 32;
    cfg.mtu = 1500;
    cfg.raw_esp = !!(flags & 4);
    cfg.offload = (flags & 2 ? IE_LOOP_UDP_GRO : 0) | (flags & 16 ? IE_LOOP_UDP_GSO : 0);
    cfg.tun_vnet = vnet = flags & 1;
    memset(&from, 0, sizeof from);
    from.ss_family = cfg.peer_family == 4 ? AF_INET : AF_INET6;
    sa.initial_seq = 1;
    sa_in = sa;
    sa_in.initial_seq = 0;
    nreads = next_read = 0;
    if (!in || ie_esp_out_new(&sa, &out) || ie_esp_table_add(in, &sa_in) || ie_loop_new_io(&cfg, out, in, &io, &l))
        goto done;
    for (ops = 0; ops < MAX_OPS && f.n; ops++) {
        if (fz_u8(&f) & 1) {  /* tun batch */
            uint32_t count = 1 + fz_u8(&f) % MAX_READS;
            nreads = next_read = 0;
            while (nreads < count && f.n) {
                reads[nreads] = fz_chunk(&f, &read_len[nreads]);
                nreads++;
            }
            ie_loop_tun_batch(l);
            while (next_read < nreads)  /* segments of a super-packet may wait for the next batch */
                if (ie_loop_tun_batch(l) == 0)
                    break;
            nreads = next_read = 0;
        } else {
            uint32_t seg = fz_u16(&f);
            uint8_t mf = fz_u8(&f);
            size_t len;
            if (mf & 2) {
                msgs[nmsgs] = encap_train(out, &f, &len, &seg);
            } else {
                const uint8_t *d = fz_chunk(&f, &len);
                msgs[nmsgs] = malloc(len + 1);
                memcpy(msgs[nmsgs], d, len);
            }
            ie_loop_rx_msg(l, &from, msgs[nmsgs], (uint32_t)len, seg, mf & 1, &k);
            nmsgs++;
        }
    }
    ie_loop_rx_end(l, k);
done:
    for (i = 0; i < nmsgs; i++)
        free(msgs[i]);
    ie_loop_free(l);
    ie_esp_out_free(out);
    ie_esp_table_free(in);
    return 0;
}
