/* offload.h - TCP segmentation (TSO) and coalescing (GRO) in userspace, and the Internet checksum,
 * shared by the gateway loop (loop.c: IP packets, L2 offset 0) and the MACsec link loop
 * (macsec_loop.c: Ethernet frames, L2 offset 14 or more).  Pure functions on buffers: no I/O, so
 * they are unit-tested and fuzzed on their own (native/tests, native/fuzz). */
#ifndef IE_OFFLOAD_H
#define IE_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#include <linux/virtio_net.h>

#include "ipsecemu.h"

#define IE_VNET_LEN 10       /* struct virtio_net_hdr in front of every packet on an IFF_VNET_HDR tun/tap */
#define IE_GRO_MAX 65000     /* bytes in one coalesced packet (its IP length must fit 16 bits) */
#define IE_GRO_SEGS 64       /* segments in one coalesced packet */

/* ---- Internet checksum (RFC 1071) ---- */

/* Add len bytes at p (big-endian 16-bit words, an odd last byte padded) to sum, unfolded. */
uint64_t ie_csum_acc(const uint8_t *p, size_t len, uint64_t sum);
/* Fold a sum to 16 bits (not complemented). */
uint16_t ie_csum_fold(uint64_t sum);
/* Store the complemented folded sum big-endian at at[0..2). */
void ie_csum_put(uint8_t *at, uint64_t sum);
void ie_put16(uint8_t *p, uint32_t v);

/* A packet read behind a virtio_net_hdr with NEEDS_CSUM: the field at csum_start + csum_offset
 * holds the pseudo-header sum; finish it over [csum_start, len).  Returns 0 (nothing written)
 * when the header points outside the packet or at an odd offset (the kernel never does). */
int ie_vnet_finish_csum(uint8_t *pkt, uint32_t len, const struct virtio_net_hdr *h);

/* ---- TSO: cut a TCP super-packet into segments ---- */

typedef struct ie_tso {
    const uint8_t *pkt;      /* the super-packet (borrowed until the last segment is taken) */
    uint32_t len;            /* its length */
    uint32_t ipo, tcpo, hlen; /* offsets of the IP header, the TCP header, the payload */
    uint32_t mss, off, seg, seq;
    uint16_t id;             /* IPv4 ID of the first segment */
    int v6, active;          /* active: segments remain */
} ie_tso;

/* Check a super-packet of len bytes at pkt whose IP header starts at l2 (after an Ethernet
 * header whose EtherType, when l2 >= 2, must match the IP version), per the virtio header h.
 * Each segment will be at most max_out bytes (the MTU; with l2, the frame size).  Returns 1 and
 * arms t, or 0 when it cannot be cut (IPv6 extension headers, bad lengths, no gso_size). */
int ie_tso_start(ie_tso *t, const uint8_t *pkt, uint32_t len, uint32_t l2, const struct virtio_net_hdr *h,
                 uint32_t max_out);
/* Write the next segment, a complete packet with its IP and TCP checksums, at out (room for
 * max_out bytes); returns its length.  Only while t->active. */
uint32_t ie_tso_next(ie_tso *t, uint8_t *out);

/* ---- GRO: coalesce consecutive segments of one TCP flow ---- */

typedef struct ie_tcp_seg {
    uint8_t *p;              /* start of the packet (its L2 header, if any) */
    uint32_t len, l2, iphl, hl, seq; /* iphl, hl: offsets of the TCP header and of the payload */
} ie_tcp_seg;

/* A plain TCP data segment that may be coalesced: IPv4 without options or fragments or IPv6
 * straight to TCP (behind an untagged Ethernet header with the matching EtherType when l2 is 14),
 * flags ACK (+PSH) only, some payload.  Returns 1 and fills s, else 0. */
int ie_tcp_seg_parse(uint8_t *p, uint32_t len, uint32_t l2, ie_tcp_seg *s);

typedef struct ie_gro {
    uint32_t n;              /* segments in the run */
    uint32_t total, mss, next;
    int open;                /* the run may take one more segment */
    ie_tcp_seg seg[IE_GRO_SEGS];
    uint32_t tag[IE_GRO_SEGS]; /* the caller's index of each segment */
} ie_gro;

/* Add s (tagged with the caller's index) to the run.  Returns 1 when added: it continues the run
 * (same flow and headers, next sequence number, not longer than the first segment, within
 * IE_GRO_MAX / IE_GRO_SEGS) or starts one in an empty run.  Returns 0, adding nothing, when it
 * cannot join a non-empty run: the caller writes the run out, calls ie_gro_reset, adds s again. */
int ie_gro_add(ie_gro *g, const ie_tcp_seg *s, uint32_t tag);
void ie_gro_reset(ie_gro *g);
/* The run (n >= 2) as one super-packet at out: a virtio_net_hdr (GSO TCPv4/6, NEEDS_CSUM with the
 * pseudo-header sum in the TCP checksum field) and the packet.  out needs IE_VNET_LEN + 65536 bytes.
 * Returns the bytes written. */
uint32_t ie_gro_build(const ie_gro *g, uint8_t *out);

/* Where ie_vnet_deliver writes: d/len for pkts packets; d NULL when a packet had no room in front
 * for its virtio header (counted as a write error by the caller). */
typedef void (*ie_vnet_write_fn)(void *ctx, uint8_t *d, size_t len, uint32_t pkts);

/* Hand the packets of pkts[0..k) with IE_PKT_DELIVER to a vnet tun/tap, in order: runs of one TCP
 * flow coalesced into one super-packet (built in coal, IE_VNET_LEN + 65536 bytes), anything else
 * alone behind a zero virtio header written in place (IE_VNET_LEN bytes in front of it).  l2: as
 * ie_tcp_seg_parse.  Returns the super-packets written. */
uint32_t ie_vnet_deliver(ie_gro *g, uint8_t *coal, ie_pkt *pkts, uint32_t k, uint32_t l2, ie_vnet_write_fn write,
                         void *ctx);

#endif
