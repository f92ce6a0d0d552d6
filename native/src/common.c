/* common.c - events, lifetimes, AES-GCM helpers, the hash map and the ABI version. */
#include <stdlib.h>
#include <time.h>

#include "internal.h"

int ie_abi_version(void)
{
    return IE_ABI_VERSION;
}

void ie_pkts_layout(ie_pkt *pkts, size_t n, uint8_t *base, const uint32_t *lens, uint32_t head,
                    uint32_t tail, uint8_t next_header)
{
    size_t i, pos = 0;
    for (i = 0; i < n; i++) {
        memset(&pkts[i], 0, sizeof pkts[i]);
        pkts[i].buf = base + pos;
        pkts[i].off = head;
        pkts[i].len = lens[i];
        pkts[i].cap = head + lens[i] + tail;
        pkts[i].next_header = next_header;
        pos += (size_t)head + lens[i] + tail;
    }
}

void ie_pkts_spans(const ie_pkt *pkts, size_t n, const uint8_t *base, uint64_t *spans)
{
    size_t i;
    for (i = 0; i < n; i++) {
        spans[2 * i] = (uint64_t)(pkts[i].buf - base) + pkts[i].off;
        spans[2 * i + 1] = pkts[i].len;
    }
}

uint64_t ie_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time, as openssl speed counts */
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

size_t ie_events_pop(ie_events *ev, uint8_t *codes, size_t max)
{
    uint32_t h = atomic_load_explicit(&ev->head, memory_order_relaxed);
    uint32_t t = atomic_load_explicit(&ev->tail, memory_order_acquire);
    size_t n = 0;

    while (n < max && h != t)
        codes[n++] = ev->queue[h++ % sizeof ev->queue];
    atomic_store_explicit(&ev->head, h, memory_order_release);
    return n;
}

void ie_lifetime_account(const ie_lifetime *lt, ie_counters *c, ie_events *ev, uint64_t bytes)
{
    c->packets++;
    c->bytes += bytes;
    if (lt->soft_packets && c->packets >= lt->soft_packets)
        ie_event_fire(ev, IE_EV_SOFT | IE_EV_PACKETS);
    if (lt->hard_packets && c->packets >= lt->hard_packets)
        ie_event_fire(ev, IE_EV_HARD | IE_EV_PACKETS);
    if (lt->soft_bytes && c->bytes >= lt->soft_bytes)
        ie_event_fire(ev, IE_EV_SOFT | IE_EV_BYTES);
    if (lt->hard_bytes && c->bytes >= lt->hard_bytes)
        ie_event_fire(ev, IE_EV_HARD | IE_EV_BYTES);
}

/* ---- AES-GCM: one context per SA, key expanded once ---- */

EVP_CIPHER_CTX *ie_gcm_new(const uint8_t *key, size_t keylen, int enc)
{
    const EVP_CIPHER *c;
    EVP_CIPHER_CTX *ctx;

    switch (keylen) {
    case 16: c = EVP_aes_128_gcm(); break;
    case 24: c = EVP_aes_192_gcm(); break;
    case 32: c = EVP_aes_256_gcm(); break;
    default: return NULL;
    }
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return NULL;
    if (EVP_CipherInit_ex(ctx, c, NULL, key, NULL, enc) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int ie_gcm_seal(EVP_CIPHER_CTX *ctx, const uint8_t *iv, const uint8_t *aad, int aadlen,
                uint8_t *data, int len, uint8_t *tag, int taglen)
{
    int outl;
    uint8_t full[16], none[16];  /* GCM's Final writes no data; `none` avoids NULL + 0 */

    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, 1) != 1)
        return 0;
    if (aadlen && EVP_CipherUpdate(ctx, NULL, &outl, aad, aadlen) != 1)
        return 0;
    if (len && EVP_CipherUpdate(ctx, data, &outl, data, len) != 1)
        return 0;
    if (EVP_CipherFinal_ex(ctx, none, &outl) != 1)
        return 0;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, full) != 1)
        return 0;
    memcpy(tag, full, (size_t)taglen); /* truncated ICV = leading bytes of the tag */
    return 1;
}

int ie_gcm_open(EVP_CIPHER_CTX *ctx, const uint8_t *iv, const uint8_t *aad, int aadlen,
                uint8_t *data, int len, const uint8_t *tag, int taglen)
{
    int outl;
    uint8_t none[16];

    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, 0) != 1)
        return 0;
    if (aadlen && EVP_CipherUpdate(ctx, NULL, &outl, aad, aadlen) != 1)
        return 0;
    if (len && EVP_CipherUpdate(ctx, data, &outl, data, len) != 1)
        return 0;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, taglen, (void *)tag) != 1)
        return 0;
    return EVP_CipherFinal_ex(ctx, none, &outl) == 1;
}

/* ---- hash map ---- */

static size_t map_hash(uint64_t k1, uint32_t k2)
{
    uint64_t h = (k1 ^ ((uint64_t)k2 << 56) ^ k2) * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h ^ (h >> 29));
}

int ie_map_init(ie_map *m)
{
    m->cap = 16;
    m->count = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots ? IE_S_OK : IE_S_ENOMEM;
}

void ie_map_destroy(ie_map *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}

void *ie_map_get(const ie_map *m, uint64_t k1, uint32_t k2)
{
    size_t mask = m->cap - 1, i = map_hash(k1, k2) & mask;
    while (m->slots[i].used) {
        if (m->slots[i].k1 == k1 && m->slots[i].k2 == k2)
            return m->slots[i].val;
        i = (i + 1) & mask;
    }
    return NULL;
}

static void map_insert_slot(ie_map_slot *slots, size_t cap, uint64_t k1, uint32_t k2, void *val)
{
    size_t mask = cap - 1, i = map_hash(k1, k2) & mask;
    while (slots[i].used)
        i = (i + 1) & mask;
    slots[i].k1 = k1;
    slots[i].k2 = k2;
    slots[i].val = val;
    slots[i].used = 1;
}

int ie_map_put(ie_map *m, uint64_t k1, uint32_t k2, void *val)
{
    if (ie_map_get(m, k1, k2))
        return IE_S_EEXIST;
    if ((m->count + 1) * 2 > m->cap) { /* keep load <= 1/2 so probes stay short */
        size_t ncap = m->cap * 2, i;
        ie_map_slot *ns = calloc(ncap, sizeof *ns);
        if (!ns)
            return IE_S_ENOMEM;
        for (i = 0; i < m->cap; i++)
            if (m->slots[i].used)
                map_insert_slot(ns, ncap, m->slots[i].k1, m->slots[i].k2, m->slots[i].val);
        free(m->slots);
        m->slots = ns;
        m->cap = ncap;
    }
    map_insert_slot(m->slots, m->cap, k1, k2, val);
    m->count++;
    return IE_S_OK;
}

void *ie_map_del(ie_map *m, uint64_t k1, uint32_t k2)
{
    size_t mask = m->cap - 1, i = map_hash(k1, k2) & mask, j;
    void *val;

    while (m->slots[i].used && !(m->slots[i].k1 == k1 && m->slots[i].k2 == k2))
        i = (i + 1) & mask;
    if (!m->slots[i].used)
        return NULL;
    val = m->slots[i].val;
    m->slots[i].used = 0;
    m->count--;
    /* backward-shift: re-place the rest of the cluster so lookups never stop early */
    j = (i + 1) & mask;
    while (m->slots[j].used) {
        ie_map_slot s = m->slots[j];
        m->slots[j].used = 0;
        map_insert_slot(m->slots, m->cap, s.k1, s.k2, s.val);
        j = (j + 1) & mask;
    }
    return val;
}
