/* fuzz_offload.c - offload.c on its own (libFuzzer): TSO cutting, GRO coalescing into vnet
 * writes, checksum completion.  Oracles: every segment fits max_out and carries valid IPv4 and
 * TCP checksums; every coalesced write has consistent virtio and IP lengths. */
#include <stdio.h>

#include "fuzz.h"
#include "offload.h"

static const uint32_t l2_choice[4] = {0, 14, 18, 22};

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "offload oracle: %s\n", what);
        abort();
    }
}

static void fuzz_tso(fz *f)
{
    uint32_t l2 = l2_choice[fz_u8(f) & 3], max_out;
    struct virtio_net_hdr h;
    size_t len;
    const uint8_t *d;
    uint8_t *pkt, *out;
    ie_tso t;

    memset(&h, 0, sizeof h);
    h.gso_type = fz_u8(f);
    h.gso_size = fz_u16(f);
    max_out = 60 + fz_u16(f) % 9000;
    d = fz_chunk(f, &len);
    pkt = malloc(len + 1);
    memcpy(pkt, d, len);
    if (ie_tso_start(&t, pkt, (uint32_t)len, l2, &h, max_out)) {
        out = malloc(max_out);
        while (t.active) {
            uint32_t n = ie_tso_next(&t, out), iphl = t.tcpo - t.ipo;
            const uint8_t *ip = out + t.ipo, *tcp = out + t.tcpo;
            uint64_t pseudo;
            check(n <= max_out && n > t.hlen, "segment size");
            if (!t.v6) {
                check(ie_csum_fold(ie_csum_acc(ip, iphl, 0)) == 0xffff, "IPv4 header checksum");
                pseudo = ie_csum_acc(ip + 12, 8, 0);
            } else {
                pseudo = ie_csum_acc(ip + 8, 32, 0);
            }
            check(ie_csum_fold(ie_csum_acc(tcp, n - t.tcpo, pseudo + 6 + (n - t.tcpo))) == 0xffff, "TCP checksum");
        }
        free(out);
    }
    free(pkt);
}

static uint32_t gro_l2;

static void sink(void *ctx, uint8_t *d, size_t len, uint32_t pkts)
{
    struct virtio_net_hdr h;

    (void)ctx;
    check(pkts >= 1 && pkts <= IE_GRO_SEGS, "packets per write");
    if (!d)
        return;
    check(len >= IE_VNET_LEN, "write shorter than its virtio header");
    fz_touch(d, len);
    memcpy(&h, d, sizeof h);
    if (h.gso_type == VIRTIO_NET_HDR_GSO_NONE) {
        check(pkts == 1, "several packets without GSO");
        return;
    }
    check(pkts >= 2 && h.hdr_len < len - IE_VNET_LEN && h.gso_size > 0 &&
          (uint32_t)h.csum_start + h.csum_offset + 2 <= len - IE_VNET_LEN && len - IE_VNET_LEN <= 65535 + gro_l2,
          "virtio header of a super-packet");
    if (h.gso_type == VIRTIO_NET_HDR_GSO_TCPV4) {
        const uint8_t *ip = d + IE_VNET_LEN + gro_l2;
        check(((uint32_t)ip[2] << 8 | ip[3]) == len - IE_VNET_LEN - gro_l2, "IPv4 total length");
        check(ie_csum_fold(ie_csum_acc(ip, 20, 0)) == 0xffff, "IPv4 header checksum");
    }
}

static void fuzz_gro(fz *f)
{
    static ie_gro g;
    ie_pkt pkts[IE_LOOP_MAX_BATCH];
    uint8_t *coal = malloc(IE_VNET_LEN + 65536);
    uint32_t k = 1 + fz_u8(f) % 80, i;

    gro_l2 = fz_u8(f) & 1 ? 14 : 0;
    for (i = 0; i < k; i++) {
        uint8_t flags = fz_u8(f);
        uint32_t head = flags & 1 ? (uint32_t)(flags >> 4) : IE_VNET_LEN;  /* sometimes no room */
        size_t len;
        const uint8_t *d = fz_chunk(f, &len);
        memset(&pkts[i], 0, sizeof pkts[i]);
        pkts[i].buf = malloc(head + len + 1);
        memcpy(pkts[i].buf + head, d, len);
        pkts[i].off = head;
        pkts[i].len = (uint32_t)len;
        pkts[i].cap = head + (uint32_t)len;
        pkts[i].flags = flags & 2 ? 0 : IE_PKT_DELIVER;
    }
    ie_vnet_deliver(&g, coal, pkts, k, gro_l2, sink, NULL);
    for (i = 0; i < k; i++)
        free(pkts[i].buf);
    free(coal);
}

static void fuzz_csum(fz *f)
{
    struct virtio_net_hdr h;
    size_t len;
    const uint8_t *d;
    uint8_t *pkt;

    memset(&h, 0, sizeof h);
    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h.csum_start = fz_u16(f);
    h.csum_offset = fz_u16(f);
    d = fz_chunk(f, &len);
    pkt = malloc(len + 1);
    memcpy(pkt, d, len);
    {
        uint32_t at = (uint32_t)h.csum_start + h.csum_offset;
        /* the field held the pseudo-header sum: with it added back, the range verifies */
        uint64_t pseudo = at + 2 <= len ? (uint32_t)pkt[at] << 8 | pkt[at + 1] : 0;
        if (ie_vnet_finish_csum(pkt, (uint32_t)len, &h))
            check(ie_csum_fold(ie_csum_acc(pkt + h.csum_start, len - h.csum_start, pseudo)) == 0xffff,
                  "completed checksum verifies");
    }
    free(pkt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size};

    switch (fz_u8(&f) % 3) {
    case 0:
        fuzz_tso(&f);
        break;
    case 1:
        fuzz_gro(&f);
        break;
    default:
        fuzz_csum(&f);
        break;
    }
    return 0;
}
