/* transport.h - IP header work for transport-mode ESP (RFC 4303 §3.1.1): find where the
 * upper-layer data starts, rewrite protocol/lengths/checksum, build a fresh header, and recompute
 * TCP/UDP checksums after NAT (RFC 3948 §3.1.3).  Pure functions on buffers (no I/O). */
#ifndef IE_TRANSPORT_H
#define IE_TRANSPORT_H

#include <stdint.h>

typedef struct ie_ipinfo {
    int v6;
    uint32_t hlen;       /* bytes up to the upper-layer data (IPv4 options / IPv6 ext headers included) */
    uint32_t total;      /* packet length according to the header (<= the buffer length) */
    uint32_t proto_off;  /* offset of the byte holding proto (IPv4: 9; IPv6: the last next header) */
    uint8_t proto;
    int fragment;        /* IPv4 MF/offset, or an IPv6 fragment header: no transport framing */
} ie_ipinfo;

/* Parse an IPv4/IPv6 header at d (len bytes); IPv6 walks hop-by-hop, routing, fragment and
 * destination options headers (the ones that sit before ESP).  Returns 1, or 0 if malformed. */
int ie_ip_parse(const uint8_t *d, uint32_t len, ie_ipinfo *ip);
/* Header at h (as parsed into ip) now carries proto and payload_len bytes of upper-layer data:
 * set the protocol byte, the length field and (IPv4) the header checksum.  Returns 0 (nothing
 * written) if the length does not fit the 16-bit field. */
int ie_ip_rewrite(uint8_t *h, const ie_ipinfo *ip, uint8_t proto, uint32_t payload_len);
/* A fresh option-less header at h (20 bytes IPv4 with DF, 40 IPv6; TTL/hop limit 64) from src to
 * dst (4 or 16 bytes each).  Returns the header length. */
uint32_t ie_ip_build(uint8_t *h, int v6, const uint8_t *src, const uint8_t *dst, uint8_t proto,
                     uint32_t payload_len);
/* Recompute the TCP or UDP checksum of the whole packet at pkt (header as in ip) from its
 * addresses; other protocols, truncated headers and IPv4 UDP without checksum are left alone. */
void ie_l4_csum_fix(uint8_t *pkt, const ie_ipinfo *ip);

#endif
