/* transport.c - IP header work for transport-mode ESP; see transport.h.  Mirrors
 * ipsecemu/esp/framing.py (parse_ip, _rewrite, fix_l4_checksum), the oracle of the tests. */
#include <string.h>

#include "internal.h"
#include "offload.h"
#include "transport.h"

static uint32_t get16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

int ie_ip_parse(const uint8_t *d, uint32_t len, ie_ipinfo *ip)
{
    memset(ip, 0, sizeof *ip);
    if (len < 1)
        return 0;
    if (d[0] >> 4 == 4) {
        uint32_t hl = (uint32_t)(d[0] & 15) * 4;
        if (len < 20 || hl < 20 || hl > len)
            return 0;
        ip->total = get16(d + 2);
        if (ip->total < hl || ip->total > len)
            return 0;
        ip->hlen = hl;
        ip->proto_off = 9;
        ip->proto = d[9];
        ip->fragment = (get16(d + 6) & 0x3FFF) != 0;
        return 1;
    }
    if (d[0] >> 4 == 6) {
        uint32_t off = 40, at = 6;
        uint8_t nh;
        if (len < 40)
            return 0;
        ip->v6 = 1;
        ip->total = 40 + get16(d + 4);
        if (ip->total > len)  /* a jumbogram (length 0 + option) is not supported either */
            return 0;
        nh = d[6];
        while (nh == 0 || nh == 43 || nh == 44 || nh == 60) {
            uint32_t elen;
            if (off + 8 > ip->total)
                return 0;
            elen = nh == 44 ? 8 : ((uint32_t)d[off + 1] + 1) * 8;
            if (nh == 44 && (get16(d + off + 2) & 0xFFF9))  /* offset or M: an atomic fragment is whole */
                ip->fragment = 1;
            if (off + elen > ip->total)
                return 0;
            at = off;
            nh = d[off];
            off += elen;
        }
        ip->hlen = off;
        ip->proto_off = at;
        ip->proto = nh;
        return 1;
    }
    return 0;
}

int ie_ip_rewrite(uint8_t *h, const ie_ipinfo *ip, uint8_t proto, uint32_t payload_len)
{
    if (!ip->v6) {
        uint32_t total = ip->hlen + payload_len;
        if (total > 0xFFFF)
            return 0;
        h[ip->proto_off] = proto;
        ie_put16(h + 2, total);
        h[10] = h[11] = 0;
        ie_csum_put(h + 10, ie_csum_acc(h, ip->hlen, 0));
        return 1;
    }
    if (ip->hlen - 40 + payload_len > 0xFFFF)
        return 0;
    h[ip->proto_off] = proto;
    ie_put16(h + 4, ip->hlen - 40 + payload_len);
    return 1;
}

uint32_t ie_ip_build(uint8_t *h, int v6, const uint8_t *src, const uint8_t *dst, uint8_t proto,
                     uint32_t payload_len)
{
    if (v6) {
        memset(h, 0, 40);
        h[0] = 0x60;
        ie_put16(h + 4, payload_len);
        h[6] = proto;
        h[7] = 64;
        memcpy(h + 8, src, 16);
        memcpy(h + 24, dst, 16);
        return 40;
    }
    memset(h, 0, 20);
    h[0] = 0x45;
    ie_put16(h + 2, 20 + payload_len);
    h[6] = 0x40;  /* DF: an atomic datagram, so ID 0 is fine (RFC 6864) */
    h[8] = 64;
    h[9] = proto;
    memcpy(h + 12, src, 4);
    memcpy(h + 16, dst, 4);
    ie_csum_put(h + 10, ie_csum_acc(h, 20, 0));
    return 20;
}

void ie_l4_csum_fix(uint8_t *pkt, const ie_ipinfo *ip)
{
    uint8_t *l4 = pkt + ip->hlen, pseudo[8];
    uint32_t l4len = ip->total - ip->hlen, at;
    uint64_t sum;

    if (ip->fragment || (ip->proto != 6 && ip->proto != 17))
        return;
    at = ip->proto == 6 ? 16 : 6;
    if (l4len < at + 2)
        return;
    if (ip->proto == 17 && !ip->v6 && !l4[6] && !l4[7])
        return;  /* IPv4 UDP without checksum stays without */
    l4[at] = l4[at + 1] = 0;
    if (ip->v6) {
        sum = ie_csum_acc(pkt + 8, 32, 0);
        ie_put32(pseudo, l4len);
        pseudo[4] = pseudo[5] = pseudo[6] = 0;
        pseudo[7] = ip->proto;
    } else {
        sum = ie_csum_acc(pkt + 12, 8, 0);
        pseudo[0] = 0;
        pseudo[1] = ip->proto;
        ie_put16(pseudo + 2, l4len);
        memset(pseudo + 4, 0, 4);
    }
    sum = ie_csum_acc(pseudo, 8, sum);
    sum = ie_csum_acc(l4, l4len, sum);
    ie_csum_put(l4 + at, sum);
    if (ip->proto == 17 && !l4[at] && !l4[at + 1])
        l4[at] = l4[at + 1] = 0xFF;  /* RFC 768: a computed zero goes out as all ones */
}
