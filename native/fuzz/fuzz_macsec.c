/* fuzz_macsec.c - MACsec protect and validate through the public C API (libFuzzer).
 *
 * Input: cfg (fuzz_macsec_cfg) | an | mode | pn (4) | pn_hi (XPN) | n | n x (headroom, tailroom,
 * chunk).  mode bit 0 clear: validate the chunks as received frames (lowest acceptable PN = pn);
 * set: protect them (first PN = pn) and validate the results with a fresh receive SecY, which
 * must deliver exactly the frame (with an explicit SCI, validation on; else a finding). */
#include <stdio.h>

#include "fuzz.h"

#define MAX_BATCH 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f = {data, size};
    uint8_t b = fz_u8(&f), an = fz_u8(&f), mode = fz_u8(&f), verdicts[MAX_BATCH], back[MAX_BATCH];
    uint64_t pn = fz_u32(&f), pn_hi = fz_u8(&f);
    uint32_t n, i;
    ie_secy_cfg secy;
    ie_macsec_sa_cfg sa;
    ie_pkt pkts[MAX_BATCH];
    uint8_t *bufs[MAX_BATCH], *copies[MAX_BATCH];
    size_t lens[MAX_BATCH];
    ie_macsec_rx *rx = NULL;
    ie_macsec_tx *tx = NULL;

    fuzz_macsec_cfg(b, an, &secy, &sa);
    if (sa.cipher >= IE_MACSEC_GCM_AES_XPN_128)
        pn |= pn_hi << 32;
    sa.next_pn = pn ? pn : 1;
    n = 1 + fz_u8(&f) % MAX_BATCH;
    memset(pkts, 0, sizeof pkts);
    for (i = 0; i < n; i++) {
        uint32_t head = fz_u8(&f), tail = fz_u8(&f);
        const uint8_t *d = fz_chunk(&f, &lens[i]);
        bufs[i] = malloc(head + lens[i] + tail + 1);
        memcpy(bufs[i] + head, d, lens[i]);
        copies[i] = malloc(lens[i] + 1);
        memcpy(copies[i], d, lens[i]);
        pkts[i].buf = bufs[i];
        pkts[i].off = head;
        pkts[i].len = (uint32_t)lens[i];
        pkts[i].cap = head + (uint32_t)lens[i] + tail;
    }
    if (ie_macsec_rx_new(&secy, &rx) != IE_S_OK || ie_macsec_rx_add_sa(rx, &sa) != IE_S_OK)
        goto done;
    if (!(mode & 1)) {
        ie_macsec_validate(rx, pkts, n, verdicts);
        for (i = 0; i < n; i++)
            if (pkts[i].flags & IE_PKT_DELIVER)
                fz_touch(pkts[i].buf + pkts[i].off, pkts[i].len);
    } else if (ie_macsec_tx_new(&secy, &sa, &tx) == IE_S_OK) {
        int check = secy.include_sci && secy.validate != IE_VALIDATE_DISABLED;
        ie_macsec_protect(tx, pkts, n, verdicts);
        ie_macsec_validate(rx, pkts, n, back);
        for (i = 0; check && i < n; i++) {
            if (verdicts[i] != IE_OK)
                continue;
            if (back[i] != IE_OK || !(pkts[i].flags & IE_PKT_DELIVER) || pkts[i].len != lens[i] ||
                memcmp(pkts[i].buf + pkts[i].off, copies[i], lens[i])) {
                fprintf(stderr, "MACsec round trip broke: frame %u verdict %u len %u/%zu\n", i, back[i],
                        pkts[i].len, lens[i]);
                abort();
            }
        }
    }
    {
        ie_counters c;
        uint64_t next;
        ie_macsec_rx_counters(rx, &c);
        ie_macsec_rx_next_pn(rx, sa.sci, sa.an, &next);
    }
done:
    for (i = 0; i < n; i++) {
        free(bufs[i]);
        free(copies[i]);
    }
    ie_macsec_tx_free(tx);
    ie_macsec_rx_free(rx);
    return 0;
}
