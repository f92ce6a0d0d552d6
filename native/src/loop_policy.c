/* loop_policy.c - selectors of the gateway loop: several Child SAs with one peer, each with its
 * own traffic selectors (RFC 7296 section 3.13.1: address range, IP protocol, port range; ICMP
 * type/code ride in the port field as type << 8 | code).  Outbound: the lowest slot whose local
 * selectors hold the source and remote selectors the destination.  Inbound: the packet's source
 * must be in the SA's remote selectors and its destination in the local ones (RFC 4301 section
 * 5.2, step 4).  Cheap on purpose: a header parse and a few memcmp per packet. */
#include <string.h>

#include "loop_policy.h"

typedef struct sel {
    uint8_t fam, proto, ports_ok;
    uint16_t sport, dport;
    const uint8_t *src, *dst;
} sel;

/* IPv6 extension headers walked to reach the transport header (hop-by-hop, routing, dest opts) */
static int ext_hdr(uint8_t nh)
{
    return nh == 0 || nh == 43 || nh == 60;
}

/* 0: not an IP packet we can read (no selector matches it) */
static int parse(const uint8_t *d, uint32_t len, sel *s)
{
    uint32_t off;
    int later_frag = 0, i;

    if (len < 20)
        return 0;
    if ((d[0] >> 4) == 4) {
        uint32_t ihl = (uint32_t)(d[0] & 15) * 4;
        if (ihl < 20 || ihl > len)
            return 0;
        s->fam = 4;
        s->proto = d[9];
        s->src = d + 12;
        s->dst = d + 16;
        later_frag = (((uint32_t)(d[6] & 0x1F) << 8) | d[7]) != 0;
        off = ihl;
    } else if ((d[0] >> 4) == 6) {
        uint8_t nh;
        if (len < 40)
            return 0;
        s->fam = 6;
        s->src = d + 8;
        s->dst = d + 24;
        nh = d[6];
        off = 40;
        for (i = 0; i < 8 && (ext_hdr(nh) || nh == 44); i++) {
            if (off + 8 > len)
                return 0;
            if (nh == 44) {  /* fragment header: ports only in the first fragment */
                later_frag = (((uint32_t)d[off + 2] << 8 | d[off + 3]) & 0xFFF8) != 0;
                nh = d[off];
                off += 8;
            } else {
                uint32_t hl = ((uint32_t)d[off + 1] + 1) * 8;
                nh = d[off];
                off += hl;
            }
        }
        s->proto = nh;
    } else {
        return 0;
    }
    s->ports_ok = 0;
    s->sport = s->dport = 0;
    if (later_frag)
        return 1;  /* ports OPAQUE (RFC 4301 4.4.1.1): only "any port" selectors match */
    switch (s->proto) {
    case 6: case 17: case 132: case 136:  /* TCP, UDP, SCTP, UDP-Lite */
        if (off + 4 <= len) {
            s->sport = (uint16_t)((uint16_t)d[off] << 8 | d[off + 1]);
            s->dport = (uint16_t)((uint16_t)d[off + 2] << 8 | d[off + 3]);
            s->ports_ok = 1;
        }
        break;
    case 1: case 58:  /* ICMP, ICMPv6: type << 8 | code in both */
        if (off + 2 <= len) {
            s->sport = s->dport = (uint16_t)((uint16_t)d[off] << 8 | d[off + 1]);
            s->ports_ok = 1;
        }
        break;
    default:
        break;
    }
    return 1;
}

static int ts_match(const ie_ts *t, const sel *s, const uint8_t *addr, uint16_t port)
{
    size_t alen = s->fam == 4 ? 4 : 16;

    if (t->family != s->fam || (t->proto && t->proto != s->proto))
        return 0;
    if (memcmp(addr, t->start, alen) < 0 || memcmp(addr, t->end, alen) > 0)
        return 0;
    if (t->port_lo == 0 && t->port_hi == 65535)
        return 1;
    return s->ports_ok && port >= t->port_lo && port <= t->port_hi;
}

static int set_match(const ie_ts_set *set, const sel *s, const uint8_t *addr, uint16_t port)
{
    uint32_t i;

    for (i = 0; i < set->n; i++)
        if (ts_match(&set->ts[i], s, addr, port))
            return 1;
    return 0;
}

uint32_t ie_pol_out_lookup(const ie_policies *p, const uint8_t *pkt, uint32_t len)
{
    sel s;
    uint32_t i;

    if (!parse(pkt, len, &s))
        return IE_POL_NONE;
    for (i = 0; i < p->nout; i++) {
        const ie_out_pol *o = &p->out[i];
        if (o->out && set_match(&o->local, &s, s.src, s.sport) && set_match(&o->remote, &s, s.dst, s.dport))
            return i;
    }
    return IE_POL_NONE;
}

int ie_pol_in_ok(ie_policies *p, uint32_t spi, const uint8_t *pkt, uint32_t len)
{
    const ie_in_pol *e = NULL;
    uint32_t i;
    sel s;

    if (!p->nin)
        return 1;
    if (p->last_in < p->nin && p->in[p->last_in].spi == spi) {
        e = &p->in[p->last_in];
    } else {
        for (i = 0; i < p->nin; i++)
            if (p->in[i].spi == spi) {
                e = &p->in[i];
                p->last_in = i;
                break;
            }
    }
    if (!e)
        return 1;
    if (!parse(pkt, len, &s))
        return 0;
    return set_match(&e->remote, &s, s.src, s.sport) && set_match(&e->local, &s, s.dst, s.dport);
}

static int set_copy(ie_ts_set *dst, const ie_ts *ts, uint32_t n)
{
    uint32_t i;

    if (n > IE_LOOP_MAX_TS || (n && !ts))
        return IE_S_EINVAL;
    for (i = 0; i < n; i++) {
        const ie_ts *t = &ts[i];
        size_t alen = t->family == 4 ? 4 : 16;
        if ((t->family != 4 && t->family != 6) || t->port_lo > t->port_hi ||
            memcmp(t->start, t->end, alen) > 0)
            return IE_S_EINVAL;
    }
    dst->n = n;
    if (n)
        memcpy(dst->ts, ts, n * sizeof *ts);
    return IE_S_OK;
}

int ie_pol_set_out(ie_policies *p, uint32_t slot, ie_esp_out *out, const ie_ts *local, uint32_t nlocal,
                   const ie_ts *remote, uint32_t nremote)
{
    ie_out_pol o;
    int rc;

    if (slot >= IE_LOOP_MAX_POLICIES)
        return IE_S_EINVAL;
    memset(&o, 0, sizeof o);
    if (out) {
        if ((rc = set_copy(&o.local, local, nlocal)) != IE_S_OK ||
            (rc = set_copy(&o.remote, remote, nremote)) != IE_S_OK)
            return rc;
        o.out = out;
    }
    p->out[slot] = o;
    while (p->nout && !p->out[p->nout - 1].out)
        p->nout--;
    if (out && slot >= p->nout)
        p->nout = slot + 1;
    return IE_S_OK;
}

int ie_pol_set_in(ie_policies *p, uint32_t spi, const ie_ts *local, uint32_t nlocal, const ie_ts *remote,
                  uint32_t nremote)
{
    ie_in_pol e;
    uint32_t i;
    int rc;

    if (!spi)
        return IE_S_EINVAL;
    memset(&e, 0, sizeof e);
    e.spi = spi;
    if ((rc = set_copy(&e.local, local, nlocal)) != IE_S_OK || (rc = set_copy(&e.remote, remote, nremote)) != IE_S_OK)
        return rc;
    for (i = 0; i < p->nin && p->in[i].spi != spi; i++)
        ;
    if (i == p->nin) {
        if (p->nin == IE_LOOP_MAX_IN_POLICIES)
            return IE_S_ENOMEM;
        p->nin++;
    }
    p->in[i] = e;
    return IE_S_OK;
}

int ie_pol_del_in(ie_policies *p, uint32_t spi)
{
    uint32_t i;

    for (i = 0; i < p->nin; i++)
        if (p->in[i].spi == spi) {
            p->in[i] = p->in[p->nin - 1];
            p->nin--;
            p->last_in = 0;
            return IE_S_OK;
        }
    return IE_S_ENOENT;
}
