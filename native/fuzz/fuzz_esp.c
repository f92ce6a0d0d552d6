/* fuzz_esp.c - ESP encap and decap through the public C API (libFuzzer).
 *
 * Input: cfg (fuzz_esp_cfg) | mode | seq (4) | n | n x (headroom, tailroom, next_header, chunk).
 * mode bit 0 clear: decapsulate the chunks as received ESP packets (SA window top = seq);
 * set: encapsulate them as payloads (first sequence number seq) and decapsulate the results with
 * a fresh inbound SA, which must hand back exactly the payload (a mismatch aborts: a finding).
 * mode bit 1: transport mode (RFC 4303 3.1.1): the chunks are whole IP packets (encap) or
 * IP | ESP / IP | UDP | ESP (decap); the round trip must give back the packet up to its IP
 * length, byte for byte except the IPv4 header checksum (rewritten, so a wrong one comes back right). */
#include <stdio.h>

#include "fuzz.h"

#define MAX_BATCH 8

/* A transport round trip: the packet comes back up to its IP length (the encap accepted it, so
 * the header parsed), equal but for the IPv4 header checksum; protocol 59 comes back as TFC. */
static void transport_oracle(const ie_pkt *p, uint8_t verdict, const uint8_t *orig, size_t len)
{
    uint32_t total, i, proto_at = 9;
    int v6 = len && orig[0] >> 4 == 6;

    total = v6 ? 40 + ((uint32_t)orig[4] << 8 | orig[5]) : ((uint32_t)orig[2] << 8 | orig[3]);
    if (v6) {  /* the protocol: after the extension headers the encap walked (0, 43, 44, 60) */
        uint32_t off = 40;
        uint8_t nh = orig[6];
        proto_at = 6;
        while (nh == 0 || nh == 43 || nh == 44 || nh == 60) {
            proto_at = off;
            off += nh == 44 ? 8 : ((uint32_t)orig[off + 1] + 1) * 8;
            nh = orig[proto_at];
        }
    }
    if (orig[proto_at] == 59 ? verdict == IE_TFC_DUMMY : verdict == IE_OK && p->len == total) {
        for (i = 0; verdict == IE_OK && i < total; i++)
            if (p->buf[p->off + i] != orig[i] && (v6 || (i != 10 && i != 11)))
                break;
        if (verdict != IE_OK || i == total)
            return;
    }
    fprintf(stderr, "ESP transport round trip broke: verdict %u len %u/%u\n", verdict, p->len, total);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size};
    ie_esp_cfg cfg = fuzz_esp_cfg(fz_u8(&f)), in_cfg;
    uint8_t mode = fz_u8(&f), verdicts[MAX_BATCH], back[MAX_BATCH];
    const int transport = !!(mode & 2);
    uint32_t seq = fz_u32(&f), n = 1 + fz_u8(&f) % MAX_BATCH, i;
    ie_pkt pkts[MAX_BATCH];
    uint8_t *bufs[MAX_BATCH], *copies[MAX_BATCH];
    size_t lens[MAX_BATCH];
    ie_esp_table *t = ie_esp_table_new();
    ie_esp_out *out = NULL;

    if (!t)
        return 0;
    memset(pkts, 0, sizeof pkts);
    for (i = 0; i < n; i++) {
        uint32_t head = fz_u8(&f), tail = fz_u8(&f);
        uint8_t nh = fz_u8(&f);
        const uint8_t *d = fz_chunk(&f, &lens[i]);
        /* exactly head + len + tail bytes: ASan sees any write past the capacity we claim */
        bufs[i] = malloc(head + lens[i] + tail + 1);
        memcpy(bufs[i] + head, d, lens[i]);
        copies[i] = malloc(lens[i] + 1);
        memcpy(copies[i], d, lens[i]);
        pkts[i].buf = bufs[i];
        pkts[i].off = head;
        pkts[i].len = (uint32_t)lens[i];
        pkts[i].cap = head + (uint32_t)lens[i] + tail;
        pkts[i].next_header = nh;
    }
    in_cfg = cfg;
    if (!(mode & 1)) {
        in_cfg.initial_seq = seq;
        if (ie_esp_table_add(t, &in_cfg) == IE_S_OK)
            (transport ? ie_esp_decap_transport : ie_esp_decap)(t, pkts, n, verdicts);
    } else {
        cfg.initial_seq = seq ? seq : 1;
        in_cfg.initial_seq = cfg.initial_seq - 1;  /* the window top just below the first packet */
        if (ie_esp_out_new(&cfg, &out) == IE_S_OK && ie_esp_table_add(t, &in_cfg) == IE_S_OK) {
            uint8_t nh[MAX_BATCH];
            (transport ? ie_esp_encap_transport : ie_esp_encap)(out, pkts, n, verdicts);
            for (i = 0; i < n; i++) {
                nh[i] = pkts[i].next_header;
                if (verdicts[i] == IE_OK)
                    fz_touch(pkts[i].buf + pkts[i].off, pkts[i].len);
                else
                    pkts[i].len = 0;  /* not sent: its bytes (maybe a valid ESP packet) must not reach decap */
            }
            (transport ? ie_esp_decap_transport : ie_esp_decap)(t, pkts, n, back);
            for (i = 0; i < n; i++) {
                if (verdicts[i] != IE_OK)
                    continue;
                if (transport) {
                    transport_oracle(&pkts[i], back[i], copies[i], lens[i]);
                    continue;
                }
                if (back[i] != (nh[i] == 59 ? IE_TFC_DUMMY : IE_OK) ||
                    (back[i] == IE_OK && (pkts[i].len != lens[i] || pkts[i].next_header != nh[i] ||
                                          memcmp(pkts[i].buf + pkts[i].off, copies[i], lens[i])))) {
                    fprintf(stderr, "ESP round trip broke: packet %u verdict %u len %u/%zu\n", i, back[i],
                            pkts[i].len, lens[i]);
                    abort();
                }
            }
        }
    }
    {
        ie_counters c;
        uint8_t ev[16];
        ie_esp_table_counters(t, FUZZ_SPI, &c);
        ie_esp_table_events(t, FUZZ_SPI, ev, sizeof ev);
    }
    for (i = 0; i < n; i++) {
        free(bufs[i]);
        free(copies[i]);
    }
    ie_esp_out_free(out);
    ie_esp_table_free(t);
    return 0;
}
