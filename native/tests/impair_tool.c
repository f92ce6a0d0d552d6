/* impair_tool.c - drives one impairment pipe (native/src/impair.c) on a fake clock, one command a
 * line on stdin, for tests/unit/native/test_impair.py (built plain and with ASan+UBSan).
 *
 *   new DELAY JITTER LOSS REORDER DUP CORRUPT RATE LIMIT SEED POOL  -> "ok" | "einval"
 *   set DELAY JITTER LOSS REORDER DUP CORRUPT RATE LIMIT           -> "ok" | "einval"
 *   push T LEN TAG            -> "pushed N" (a frame of LEN bytes, TAG in bytes 0-3, at T ns)
 *   pop T                     -> "out TAG LEN CORRUPT" per due frame, then "end"
 *   next T                    -> "next NS" ("next none" when empty)
 *   sim N INTERVAL LEN        -> N frames, one every INTERVAL ns from t=1s, clock jumping from event
 *                                to event (arrivals and next_ns): "sim delivered D lat_min L lat_max
 *                                L lat_mean L inversions I first F last L bytes B"
 *   stats                     -> "stats rx R passed P bytes B loss L queue Q tx X delayed D
 *                                reordered O duplicated U corrupted C queued N" */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "impair.h"

static ie_imp_pipe *pipe_;

static int parse_cfg(const char *s, ie_imp_dir_cfg *c, uint64_t *seed, uint32_t *pool)
{
    uint64_t v[11] = {0};
    int n = sscanf(s, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64
                   " %" SCNu64 " %" SCNu64 " %" SCNu64,
                   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    if (n < 8)
        return -1;
    memset(c, 0, sizeof(*c));
    c->delay_ns = v[0];
    c->jitter_ns = v[1];
    c->loss_ppm = (uint32_t)v[2];
    c->reorder_ppm = (uint32_t)v[3];
    c->duplicate_ppm = (uint32_t)v[4];
    c->corrupt_ppm = (uint32_t)v[5];
    c->rate_bps = v[6];
    c->limit = (uint32_t)v[7];
    if (getenv("IMPAIR_OVERHEAD"))
        c->rate_overhead = atoi(getenv("IMPAIR_OVERHEAD"));
    if (seed)
        *seed = n > 8 ? v[8] : 1;
    if (pool)
        *pool = n > 9 ? (uint32_t)v[9] : 4096;
    return 0;
}

static void push_frame(uint64_t t, uint32_t len, uint32_t tag, int print)
{
    static uint8_t f[2048];
    int n;
    memset(f, 0xA5, sizeof(f));
    memcpy(f, &tag, 4);
    n = ie_imp_pipe_push(pipe_, f, len, t);
    if (print)
        printf("pushed %d\n", n);
}

static int corrupted(const uint8_t *d, uint32_t len)
{
    uint32_t i;
    for (i = 4; i < len; i++)
        if (d[i] != 0xA5)
            return 1;
    return 0;
}

static void sim(uint64_t n, uint64_t interval, uint32_t len)
{
    uint64_t *sent_at = calloc(n ? n : 1, sizeof(uint64_t));
    uint64_t t = 1000000000ULL, i = 0, delivered = 0, bytes = 0, lmin = UINT64_MAX, lmax = 0, lsum = 0;
    uint64_t inversions = 0, first = 0, last = 0;
    uint32_t ids[64], k, prev = 0;
    int any = 0;

    for (;;) {
        uint64_t next_arrival = i < n ? 1000000000ULL + i * interval : UINT64_MAX;
        uint64_t nx = ie_imp_pipe_next_ns(pipe_, t);
        uint64_t now = next_arrival < nx ? next_arrival : nx;
        uint32_t got;
        if (now == UINT64_MAX)
            break;
        if (now < t)
            now = t;
        t = now;
        while (i < n && 1000000000ULL + i * interval <= t) {
            sent_at[i] = 1000000000ULL + i * interval;
            push_frame(sent_at[i], len, (uint32_t)i, 0);
            i++;
        }
        while ((got = ie_imp_pipe_pop(pipe_, t, ids, 64)) > 0) {
            for (k = 0; k < got; k++) {
                uint32_t l, tag;
                uint8_t *d = ie_imp_pipe_data(pipe_, ids[k], &l);
                uint64_t lat;
                memcpy(&tag, d, 4);
                lat = t - sent_at[tag];
                lmin = lat < lmin ? lat : lmin;
                lmax = lat > lmax ? lat : lmax;
                lsum += lat;
                if (any && tag < prev)
                    inversions++;
                prev = tag;
                if (!any)
                    first = t;
                any = 1;
                last = t;
                delivered++;
                bytes += l;
                ie_imp_pipe_release(pipe_, ids[k], 1);
            }
        }
    }
    printf("sim delivered %" PRIu64 " lat_min %" PRIu64 " lat_max %" PRIu64 " lat_mean %" PRIu64
           " inversions %" PRIu64 " first %" PRIu64 " last %" PRIu64 " bytes %" PRIu64 "\n",
           delivered, delivered ? lmin : 0, lmax, delivered ? lsum / delivered : 0, inversions, first, last, bytes);
    free(sent_at);
}

int main(void)
{
    static char line[4096];

    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        ie_imp_dir_cfg c;
        uint64_t a, b, seed;
        uint32_t len, tag, pool, ids[64], k, got;
        if (strncmp(line, "new ", 4) == 0) {
            if (parse_cfg(line + 4, &c, &seed, &pool) != 0)
                return 2;
            ie_imp_pipe_free(pipe_);
            pipe_ = ie_imp_pipe_new(1514, pool, seed);
            puts(pipe_ && ie_imp_pipe_set(pipe_, &c) == IE_S_OK ? "ok" : "einval");
        } else if (strncmp(line, "set ", 4) == 0 && pipe_) {
            if (parse_cfg(line + 4, &c, NULL, NULL) != 0)
                return 2;
            puts(ie_imp_pipe_set(pipe_, &c) == IE_S_OK ? "ok" : "einval");
        } else if (sscanf(line, "push %" SCNu64 " %u %u", &a, &len, &tag) == 3 && pipe_) {
            push_frame(a, len, tag, 1);
        } else if (sscanf(line, "pop %" SCNu64, &a) == 1 && pipe_) {
            while ((got = ie_imp_pipe_pop(pipe_, a, ids, 64)) > 0)
                for (k = 0; k < got; k++) {
                    uint32_t l;
                    uint8_t *d = ie_imp_pipe_data(pipe_, ids[k], &l);
                    memcpy(&tag, d, 4);
                    printf("out %u %u %d\n", tag, l, corrupted(d, l));
                    ie_imp_pipe_release(pipe_, ids[k], 1);
                }
            puts("end");
        } else if (sscanf(line, "next %" SCNu64, &a) == 1 && pipe_) {
            b = ie_imp_pipe_next_ns(pipe_, a);
            if (b == UINT64_MAX)
                puts("next none");
            else
                printf("next %" PRIu64 "\n", b);
        } else if (sscanf(line, "sim %" SCNu64 " %" SCNu64 " %u", &a, &b, &len) == 3 && pipe_) {
            sim(a, b, len);
        } else if (strncmp(line, "stats", 5) == 0 && pipe_) {
            ie_imp_stats s;
            ie_imp_pipe_stats(pipe_, &s);
            printf("stats rx %" PRIu64 " passed %" PRIu64 " bytes %" PRIu64 " loss %" PRIu64 " queue %" PRIu64
                   " tx %" PRIu64 " delayed %" PRIu64 " reordered %" PRIu64 " duplicated %" PRIu64
                   " corrupted %" PRIu64 " queued %" PRIu64 "\n",
                   s.rx, s.passed, s.bytes, s.dropped_loss, s.dropped_queue, s.dropped_tx, s.delayed,
                   s.reordered, s.duplicated, s.corrupted, s.queued);
        } else {
            fprintf(stderr, "bad command: %s", line);
            return 2;
        }
    }
    ie_imp_pipe_free(pipe_);
    return 0;
}
