/* bench.c - time whole batches in C so benchmarks measure the data path, not Python. */
#include <stdlib.h>

#include "internal.h"

typedef struct bench_bufs {
    uint8_t *mem;
    ie_pkt *pkts;
    uint8_t *verdicts;
    uint32_t stride;
} bench_bufs;

static int bufs_new(bench_bufs *b, uint32_t n, uint32_t stride)
{
    b->stride = stride;
    b->mem = calloc(n, stride);
    b->pkts = calloc(n, sizeof *b->pkts);
    b->verdicts = calloc(n, 1);
    if (!b->mem || !b->pkts || !b->verdicts) {
        free(b->mem);
        free(b->pkts);
        free(b->verdicts);
        return 0;
    }
    return 1;
}

static void bufs_free(bench_bufs *b)
{
    free(b->mem);
    free(b->pkts);
    free(b->verdicts);
}

static void bufs_reset(bench_bufs *b, uint32_t n, uint32_t head, uint32_t size)
{
    uint32_t i;
    for (i = 0; i < n; i++) {
        ie_pkt *p = &b->pkts[i];
        memset(p, 0, sizeof *p);
        p->buf = b->mem + (size_t)i * b->stride;
        p->off = head;
        p->len = size;
        p->cap = b->stride;
        p->next_header = 4;
    }
}

static long count_bad(const bench_bufs *b, uint32_t n)
{
    long bad = 0;
    uint32_t i;
    for (i = 0; i < n; i++)
        bad += b->verdicts[i] != IE_OK;
    return bad;
}

long ie_bench_esp(const ie_esp_cfg *cfg, uint32_t size, uint32_t n, uint32_t iterations, uint64_t *ns)
{
    ie_esp_out *out = NULL;
    ie_esp_table *t = ie_esp_table_new();
    ie_esp_cfg in_cfg = *cfg;
    bench_bufs b;
    long bad = 0;
    uint32_t it, i;

    ns[0] = ns[1] = 0;
    if (!t || n == 0 || size > 65535 || ie_esp_out_new(cfg, &out) != IE_S_OK ||
        (in_cfg.initial_seq = cfg->initial_seq ? cfg->initial_seq - 1 : 0, 0) ||
        ie_esp_table_add(t, &in_cfg) != IE_S_OK || !bufs_new(&b, n, IE_ESP_HEADROOM + size + IE_ESP_TAILROOM)) {
        ie_esp_out_free(out);
        ie_esp_table_free(t);
        return -1;
    }
    for (i = 0; i < n; i++)
        memset(b.mem + (size_t)i * b.stride + IE_ESP_HEADROOM, (int)(0x40 + i), size);
    for (it = 0; it < iterations; it++) {
        uint64_t t0, t1, t2;
        bufs_reset(&b, n, IE_ESP_HEADROOM, size);
        t0 = ie_now_ns();
        ie_esp_encap(out, b.pkts, n, b.verdicts);
        t1 = ie_now_ns();
        bad += count_bad(&b, n);
        ie_esp_decap(t, b.pkts, n, b.verdicts);
        t2 = ie_now_ns();
        bad += count_bad(&b, n);
        ns[0] += t1 - t0;
        ns[1] += t2 - t1;
    }
    bufs_free(&b);
    ie_esp_out_free(out);
    ie_esp_table_free(t);
    return bad;
}

long ie_bench_macsec(const ie_secy_cfg *secy, const ie_macsec_sa_cfg *sa, uint32_t size, uint32_t n,
                     uint32_t iterations, uint64_t *ns)
{
    ie_macsec_tx *tx = NULL;
    ie_macsec_rx *rx = NULL;
    bench_bufs b;
    long bad = 0;
    uint32_t it, i;

    ns[0] = ns[1] = 0;
    if (n == 0 || size < 14 || size > 65535 || ie_macsec_tx_new(secy, sa, &tx) != IE_S_OK ||
        ie_macsec_rx_new(secy, &rx) != IE_S_OK || ie_macsec_rx_add_sa(rx, sa) != IE_S_OK ||
        !bufs_new(&b, n, IE_MACSEC_HEADROOM + size + IE_MACSEC_TAILROOM)) {
        ie_macsec_tx_free(tx);
        ie_macsec_rx_free(rx);
        return -1;
    }
    for (it = 0; it < iterations; it++) {
        uint64_t t0, t1, t2;
        bufs_reset(&b, n, IE_MACSEC_HEADROOM, size);
        for (i = 0; i < n; i++) {  /* DA, SA = SCI's MAC (implicit SCI works too), IPv4 */
            uint8_t *f = b.pkts[i].buf + IE_MACSEC_HEADROOM;
            memset(f, 0x02, 6);
            ie_put32(f + 6, (uint32_t)(sa->sci >> 32));
            f[10] = (uint8_t)(sa->sci >> 24);
            f[11] = (uint8_t)(sa->sci >> 16);
            f[12] = 0x08;
            f[13] = 0x00;
        }
        t0 = ie_now_ns();
        ie_macsec_protect(tx, b.pkts, n, b.verdicts);
        t1 = ie_now_ns();
        bad += count_bad(&b, n);
        ie_macsec_validate(rx, b.pkts, n, b.verdicts);
        t2 = ie_now_ns();
        bad += count_bad(&b, n);
        ns[0] += t1 - t0;
        ns[1] += t2 - t1;
    }
    bufs_free(&b);
    ie_macsec_tx_free(tx);
    ie_macsec_rx_free(rx);
    return bad;
}
