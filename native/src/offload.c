/* offload.c - userspace TSO/GRO and checksums for both loops (see offload.h).  The L2 offset is a
 * parameter: 0 for the gateway's tun (IP packets), the Ethernet header length for the MACsec tap. */
#include <arpa/inet.h>
#include <string.h>

#include "offload.h"

uint64_t ie_csum_acc(const uint8_t *p, size_t len, uint64_t sum)
{
    uint32_t w;

    for (; len >= 4; p += 4, len -= 4) {  /* 32-bit big-endian words fold to the same 16-bit sum */
        memcpy(&w, p, 4);                 /* memcpy: packets need not be aligned */
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

uint16_t ie_csum_fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

void ie_put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

void ie_csum_put(uint8_t *at, uint64_t sum)
{
    ie_put16(at, (uint16_t)~ie_csum_fold(sum));
}

int ie_vnet_finish_csum(uint8_t *pkt, uint32_t len, const struct virtio_net_hdr *h)
{
    uint32_t start = h->csum_start, at = start + h->csum_offset;

    if (at + 2 > len || (h->csum_offset & 1))  /* an odd offset is no 16-bit checksum field */
        return 0;
    ie_csum_put(pkt + at, ie_csum_acc(pkt + start, len - start, 0));
    return 1;
}

/* The EtherType in front of the IP header at l2 is `type` (no Ethernet header: nothing to check). */
static int ethertype_is(const uint8_t *pkt, uint32_t l2, uint8_t hi, uint8_t lo)
{
    return l2 < 2 || (pkt[l2 - 2] == hi && pkt[l2 - 1] == lo);
}

int ie_tso_start(ie_tso *t, const uint8_t *pkt, uint32_t len, uint32_t l2, const struct virtio_net_hdr *h,
                 uint32_t max_out)
{
    uint32_t type = h->gso_type & ~VIRTIO_NET_HDR_GSO_ECN, iphl, thl;
    const uint8_t *ip, *tcp;
    int v6;

    if (l2 >= len)
        return 0;
    ip = pkt + l2;
    if (type == VIRTIO_NET_HDR_GSO_TCPV4 && len - l2 >= 20 && ip[0] >> 4 == 4 && ip[9] == 6 &&
        ethertype_is(pkt, l2, 0x08, 0x00)) {
        iphl = (uint32_t)(ip[0] & 15) * 4;
        v6 = 0;
    } else if (type == VIRTIO_NET_HDR_GSO_TCPV6 && len - l2 >= 40 && ip[0] >> 4 == 6 && ip[6] == 6 &&
               ethertype_is(pkt, l2, 0x86, 0xDD)) {
        iphl = 40;  /* extension headers: not cut here (dropped) */
        v6 = 1;
    } else {
        return 0;
    }
    if (iphl < 20 || l2 + iphl + 20 > len)
        return 0;
    tcp = ip + iphl;
    thl = (uint32_t)(tcp[12] >> 4) * 4;
    if (thl < 20 || l2 + iphl + thl >= len || !h->gso_size || l2 + iphl + thl + h->gso_size > max_out)
        return 0;
    t->pkt = pkt;
    t->len = len;
    t->ipo = l2;
    t->tcpo = l2 + iphl;
    t->hlen = l2 + iphl + thl;
    t->mss = h->gso_size;
    t->off = t->hlen;
    t->seg = 0;
    t->seq = (uint32_t)tcp[4] << 24 | (uint32_t)tcp[5] << 16 | (uint32_t)tcp[6] << 8 | tcp[7];
    t->id = v6 ? 0 : (uint16_t)(ip[4] << 8 | ip[5]);
    t->v6 = v6;
    t->active = 1;
    return 1;
}

uint32_t ie_tso_next(ie_tso *t, uint8_t *out)
{
    uint32_t hl = t->hlen, rest = t->len - t->off;
    uint32_t chunk = rest < t->mss ? rest : t->mss, olen = hl + chunk, tlen = olen - t->tcpo;
    uint8_t *ip = out + t->ipo, *tcp = out + t->tcpo;
    uint32_t seq = t->seq + (t->off - hl);
    uint64_t sum;

    memcpy(out, t->pkt, hl);
    memcpy(out + hl, t->pkt + t->off, chunk);
    if (!t->v6) {
        ie_put16(ip + 2, olen - t->ipo);
        ie_put16(ip + 4, (uint16_t)(t->id + t->seg));
        ip[10] = ip[11] = 0;
        ie_csum_put(ip + 10, ie_csum_acc(ip, t->tcpo - t->ipo, 0));
        sum = ie_csum_acc(ip + 12, 8, 0);  /* pseudo header: addresses */
    } else {
        ie_put16(ip + 4, tlen);
        sum = ie_csum_acc(ip + 8, 32, 0);
    }
    tcp[4] = (uint8_t)(seq >> 24);
    tcp[5] = (uint8_t)(seq >> 16);
    tcp[6] = (uint8_t)(seq >> 8);
    tcp[7] = (uint8_t)seq;
    if (chunk < rest)
        tcp[13] &= (uint8_t)~0x09;  /* FIN, PSH: last segment only */
    if (t->seg)
        tcp[13] &= (uint8_t)~0x80;  /* CWR: first segment only */
    tcp[16] = tcp[17] = 0;
    ie_csum_put(tcp + 16, ie_csum_acc(tcp, tlen, sum + 6 + tlen));
    t->off += chunk;
    t->seg++;
    t->active = t->off < t->len;
    return olen;
}

int ie_tcp_seg_parse(uint8_t *p, uint32_t len, uint32_t l2, ie_tcp_seg *s)
{
    const uint8_t *ip, *t;
    uint32_t iplen, iphl, thl;

    if (len < l2 + 40)
        return 0;
    ip = p + l2;
    iplen = len - l2;
    if (ip[0] == 0x45 && ethertype_is(p, l2, 0x08, 0x00)) {
        iphl = 20;
        if (ip[9] != 6 || (ip[6] & 0x3f) || ip[7] || ((uint32_t)ip[2] << 8 | ip[3]) != iplen)
            return 0;
    } else if (iplen >= 60 && ip[0] >> 4 == 6 && ethertype_is(p, l2, 0x86, 0xDD)) {
        iphl = 40;
        if (ip[6] != 6 || ((uint32_t)ip[4] << 8 | ip[5]) + 40 != iplen)
            return 0;
    } else {
        return 0;
    }
    t = ip + iphl;
    thl = (uint32_t)(t[12] >> 4) * 4;
    if (thl < 20 || iphl + thl >= iplen || (t[13] & ~0x08) != 0x10)
        return 0;
    s->p = p;
    s->len = len;
    s->l2 = l2;
    s->iphl = l2 + iphl;
    s->hl = l2 + iphl + thl;
    s->seq = (uint32_t)t[4] << 24 | (uint32_t)t[5] << 16 | (uint32_t)t[6] << 8 | t[7];
    return 1;
}

/* Same flow and the same headers apart from lengths, IDs, checksums, sequence number, PSH. */
static int tcp_same_flow(const ie_tcp_seg *a, const ie_tcp_seg *b)
{
    const uint8_t *x = a->p + a->l2, *y = b->p + b->l2, *tx = a->p + a->iphl, *ty = b->p + b->iphl;

    if (a->l2 != b->l2 || a->iphl != b->iphl || a->hl != b->hl || memcmp(a->p, b->p, a->l2))
        return 0;
    if (a->iphl - a->l2 == 20 ? (x[1] != y[1] || x[6] != y[6] || x[8] != y[8] || memcmp(x + 12, y + 12, 8))
                              : (memcmp(x, y, 4) || x[7] != y[7] || memcmp(x + 8, y + 8, 32)))
        return 0;
    /* ports, ack, window, options */
    return !memcmp(tx, ty, 4) && !memcmp(tx + 8, ty + 8, 4) && !memcmp(tx + 14, ty + 14, 2) &&
           !memcmp(tx + 20, ty + 20, a->hl - a->iphl - 20);
}

static int gro_fits(const ie_gro *g, const ie_tcp_seg *s)
{
    uint32_t pl = s->len - s->hl;

    return g->open && s->seq == g->next && pl <= g->mss && g->total + pl <= IE_GRO_MAX &&
           g->n < IE_GRO_SEGS && tcp_same_flow(&g->seg[0], s);
}

int ie_gro_add(ie_gro *g, const ie_tcp_seg *s, uint32_t tag)
{
    uint32_t pl = s->len - s->hl;
    int psh = s->p[s->iphl + 13] & 0x08;

    if (!g->n) {
        g->seg[0] = *s;
        g->tag[0] = tag;
        g->n = 1;
        g->mss = pl;
        g->total = s->hl + pl;
        g->next = s->seq + pl;
        g->open = !psh;
        return 1;
    }
    if (!gro_fits(g, s))
        return 0;
    g->seg[g->n] = *s;
    g->tag[g->n++] = tag;
    g->total += pl;
    g->next += pl;
    g->open = pl == g->mss && !psh;  /* only the last segment may be short or carry PSH */
    return 1;
}

void ie_gro_reset(ie_gro *g)
{
    g->n = 0;
    g->open = 0;
}

uint32_t ie_gro_build(const ie_gro *g, uint8_t *out)
{
    const ie_tcp_seg *first = &g->seg[0], *last = &g->seg[g->n - 1];
    uint8_t *pkt = out + IE_VNET_LEN, *ip = pkt + first->l2, *tcp = pkt + first->iphl;
    struct virtio_net_hdr h;
    uint32_t i, off = first->hl;
    uint64_t sum;

    memcpy(pkt, first->p, first->hl);
    for (i = 0; i < g->n; i++) {
        const ie_tcp_seg *s = &g->seg[i];
        memcpy(pkt + off, s->p + s->hl, s->len - s->hl);
        off += s->len - s->hl;
    }
    tcp[13] |= last->p[last->iphl + 13] & 0x08;  /* PSH of the last segment */
    if (first->iphl - first->l2 == 20) {
        ie_put16(ip + 2, off - first->l2);
        ip[10] = ip[11] = 0;
        ie_csum_put(ip + 10, ie_csum_acc(ip, 20, 0));
        sum = ie_csum_acc(ip + 12, 8, 0);
    } else {
        ie_put16(ip + 4, off - first->iphl);
        sum = ie_csum_acc(ip + 8, 32, 0);
    }
    /* CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, the kernel does the rest */
    ie_put16(tcp + 16, ie_csum_fold(sum + 6 + (off - first->iphl)));
    memset(&h, 0, sizeof h);
    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h.gso_type = first->iphl - first->l2 == 20 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
    h.hdr_len = (uint16_t)first->hl;
    h.gso_size = (uint16_t)(first->len - first->hl);
    h.csum_start = (uint16_t)first->iphl;
    h.csum_offset = 16;
    memcpy(out, &h, sizeof h);
    return IE_VNET_LEN + off;
}

/* One packet behind a zero virtio header, in place. */
static void write_plain(ie_pkt *p, ie_vnet_write_fn write, void *ctx)
{
    uint8_t *d;

    if (p->off < IE_VNET_LEN) {
        write(ctx, NULL, 0, 1);
        return;
    }
    d = p->buf + p->off - IE_VNET_LEN;
    memset(d, 0, IE_VNET_LEN);
    write(ctx, d, p->len + IE_VNET_LEN, 1);
}

/* Write the run out (alone, or coalesced) and start an empty one; returns super-packets written. */
static uint32_t run_flush(ie_gro *g, uint8_t *coal, ie_pkt *pkts, ie_vnet_write_fn write, void *ctx)
{
    uint32_t built = 0;

    if (g->n == 1) {
        write_plain(&pkts[g->tag[0]], write, ctx);
    } else if (g->n > 1) {
        write(ctx, coal, ie_gro_build(g, coal), g->n);
        built = 1;
    }
    ie_gro_reset(g);
    return built;
}

uint32_t ie_vnet_deliver(ie_gro *g, uint8_t *coal, ie_pkt *pkts, uint32_t k, uint32_t l2, ie_vnet_write_fn write,
                         void *ctx)
{
    uint32_t i, built = 0;
    ie_tcp_seg s;

    ie_gro_reset(g);
    for (i = 0; i < k; i++) {
        ie_pkt *p = &pkts[i];
        if (!(p->flags & IE_PKT_DELIVER))
            continue;
        if (!ie_tcp_seg_parse(p->buf + p->off, p->len, l2, &s)) {
            built += run_flush(g, coal, pkts, write, ctx);  /* keep the order: what came before goes first */
            write_plain(p, write, ctx);
            continue;
        }
        if (!ie_gro_add(g, &s, i)) {
            built += run_flush(g, coal, pkts, write, ctx);
            ie_gro_add(g, &s, i);
        }
    }
    return built + run_flush(g, coal, pkts, write, ctx);
}
