/* policy_bench.c - what the gateway loop's selectors cost per packet, next to what the packet's
 * encryption costs: thread CPU ns per 1400-byte packet for AES-128-GCM encap (batches of 32), for
 * the outbound lookup with 1, 2 and 8 children (the match in the last one) and for the inbound
 * check.  One JSON line.  Build: .venv/bin/python native/build.py --program native/tests/policy_bench.c */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loop_policy.h"

#define N 32
#define SIZE 1400
#define ROUNDS 20000

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static ie_ts v4(uint32_t lo, uint32_t hi)
{
    ie_ts t;

    memset(&t, 0, sizeof t);
    t.family = 4;
    t.port_hi = 65535;
    for (int i = 0; i < 4; i++) {
        t.start[i] = (uint8_t)(lo >> (24 - 8 * i));
        t.end[i] = (uint8_t)(hi >> (24 - 8 * i));
    }
    return t;
}

static volatile uint32_t sink;

static double lookup_ns(ie_policies *p, const uint8_t *pkt)
{
    uint64_t t0 = now_ns();
    uint32_t acc = 0;

    for (int r = 0; r < ROUNDS; r++)
        for (int i = 0; i < N; i++)
            acc += ie_pol_out_lookup(p, pkt, SIZE);
    sink = acc;
    return (double)(now_ns() - t0) / ((double)ROUNDS * N);
}

int main(void)
{
    static uint8_t mem[N][IE_ESP_HEADROOM + SIZE + IE_ESP_TAILROOM];
    ie_pkt pkts[N];
    uint8_t verdicts[N], pkt[SIZE];
    ie_esp_cfg cfg;
    ie_esp_out *out;
    uint8_t key[20];
    ie_policies *p = calloc(1, sizeof *p);
    ie_ts local = v4(0x0A010000, 0x0A0100FF);
    double encap, one, two, eight, in;
    uint64_t t0;

    memset(&cfg, 0, sizeof cfg);
    cfg.spi = 0x1000;
    cfg.encr = IE_ENCR_AES_GCM_16;
    memset(key, 7, sizeof key);
    cfg.enc_key = key;
    cfg.enc_key_len = sizeof key;
    cfg.initial_seq = 1;
    if (!p || ie_esp_out_new(&cfg, &out) != IE_S_OK)
        return 1;
    /* an IPv4/TCP packet 10.1.0.2:40000 -> 10.2.0.2:443 */
    memset(pkt, 0, sizeof pkt);
    pkt[0] = 0x45, pkt[2] = SIZE >> 8, pkt[3] = SIZE & 0xFF, pkt[8] = 64, pkt[9] = 6;
    memcpy(pkt + 12, (uint8_t[]){10, 1, 0, 2, 10, 2, 0, 2}, 8);
    pkt[20] = 40000 >> 8, pkt[21] = 40000 & 0xFF, pkt[22] = 1, pkt[23] = 187;
    t0 = now_ns();
    for (int r = 0; r < ROUNDS / 10; r++) {
        for (int i = 0; i < N; i++) {
            memcpy(mem[i] + IE_ESP_HEADROOM, pkt, SIZE);
            memset(&pkts[i], 0, sizeof pkts[i]);
            pkts[i].buf = mem[i];
            pkts[i].off = IE_ESP_HEADROOM;
            pkts[i].len = SIZE;
            pkts[i].cap = sizeof mem[i];
            pkts[i].next_header = 4;
        }
        ie_esp_encap(out, pkts, N, verdicts);
    }
    encap = (double)(now_ns() - t0) / ((double)ROUNDS / 10 * N);
    /* children 10.1.0.0/24 <-> 10.(3+k).0.0/24 ..., the packet's child (10.2.0.0/24) last */
    for (int k = 0; k < 8; k++) {
        ie_ts remote = k == 7 ? v4(0x0A020000, 0x0A0200FF) : v4(0x0A030000 + ((uint32_t)k << 16),
                                                                    0x0A0300FF + ((uint32_t)k << 16));
        ie_pol_set_out(p, (uint32_t)k, out, &local, 1, &remote, 1);
    }
    eight = lookup_ns(p, pkt);
    for (int k = 0; k < 8; k++)
        ie_pol_set_out(p, (uint32_t)k, NULL, NULL, 0, NULL, 0);
    {
        ie_ts r2 = v4(0x0A020000, 0x0A0200FF), r1 = v4(0x0A030000, 0x0A0300FF);
        ie_pol_set_out(p, 0, out, &local, 1, &r2, 1);
        one = lookup_ns(p, pkt);
        ie_pol_set_out(p, 0, out, &local, 1, &r1, 1);
        ie_pol_set_out(p, 1, out, &local, 1, &r2, 1);
        two = lookup_ns(p, pkt);
        ie_pol_set_in(p, 0x2000, &r2, 1, &local, 1);  /* the reply direction's SA: 10.2 -> 10.1 */
    }
    {
        uint8_t rev[SIZE];
        uint32_t acc = 0;
        memcpy(rev, pkt, SIZE);
        memcpy(rev + 12, (uint8_t[]){10, 2, 0, 2, 10, 1, 0, 2}, 8);
        t0 = now_ns();
        for (int r = 0; r < ROUNDS; r++)
            for (int i = 0; i < N; i++)
                acc += (uint32_t)ie_pol_in_ok(p, 0x2000, rev, SIZE);
        sink = acc;
        in = (double)(now_ns() - t0) / ((double)ROUNDS * N);
    }
    printf("{\"encap_ns\": %.1f, \"lookup_1_ns\": %.1f, \"lookup_2_ns\": %.1f, \"lookup_8_ns\": %.1f, "
           "\"in_check_ns\": %.1f}\n", encap, one, two, eight, in);
    ie_esp_out_free(out);
    free(p);
    return 0;
}
