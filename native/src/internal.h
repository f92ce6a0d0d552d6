/* internal.h - helpers shared by the C sources (not part of the public API). */
#ifndef IE_INTERNAL_H
#define IE_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

#include "ipsecemu.h"

#define IE_UNUSED(x) ((void)(x))

static inline uint32_t ie_get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void ie_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint64_t ie_get64(const uint8_t *p)
{
    return ((uint64_t)ie_get32(p) << 32) | ie_get32(p + 4);
}

static inline void ie_put64(uint8_t *p, uint64_t v)
{
    ie_put32(p, (uint32_t)(v >> 32));
    ie_put32(p + 4, (uint32_t)v);
}

/* Expire events: each code fires at most once per SA.  A single-producer (the data path) /
 * single-consumer (the control plane polling) ring, so polling may run on another thread. */
typedef struct ie_events {
    uint64_t fired;       /* bit per code (codes < 64); producer only */
    uint8_t queue[16];
    _Atomic uint32_t head, tail;
} ie_events;

static inline void ie_event_fire(ie_events *ev, uint8_t code)
{
    uint32_t t, h;

    if (ev->fired & (1ULL << (code & 63)))
        return;
    ev->fired |= 1ULL << (code & 63);
    t = atomic_load_explicit(&ev->tail, memory_order_relaxed);
    h = atomic_load_explicit(&ev->head, memory_order_acquire);
    if (t - h < sizeof ev->queue) {  /* at most 8 distinct codes exist, so this never drops */
        ev->queue[t % sizeof ev->queue] = code;
        atomic_store_explicit(&ev->tail, t + 1, memory_order_release);
    }
}

size_t ie_events_pop(ie_events *ev, uint8_t *codes, size_t max);

/* Lifetime: packet/byte limits (0 = unlimited), shared by ESP in/out. */
typedef struct ie_lifetime {
    uint64_t soft_bytes, hard_bytes, soft_packets, hard_packets;
} ie_lifetime;

static inline int ie_lifetime_hard_reached(const ie_lifetime *lt, const ie_counters *c)
{
    return (lt->hard_packets && c->packets >= lt->hard_packets) ||
           (lt->hard_bytes && c->bytes >= lt->hard_bytes);
}

/* Count one delivered packet and fire lifetime events as limits are first reached. */
void ie_lifetime_account(const ie_lifetime *lt, ie_counters *c, ie_events *ev, uint64_t bytes);

/* AES-GCM on a context whose key was set at SA setup; only the 12-byte IV changes per call.
 * data is transformed in place.  Returns 1 on success (open: tag verified). */
int ie_gcm_seal(EVP_CIPHER_CTX *ctx, const uint8_t *iv, const uint8_t *aad, int aadlen,
                uint8_t *data, int len, uint8_t *tag, int taglen);
int ie_gcm_open(EVP_CIPHER_CTX *ctx, const uint8_t *iv, const uint8_t *aad, int aadlen,
                uint8_t *data, int len, const uint8_t *tag, int taglen);
EVP_CIPHER_CTX *ie_gcm_new(const uint8_t *key, size_t keylen, int enc);

/* Open-addressing hash map (linear probing, backward-shift delete) from (k1, k2) to a pointer. */
typedef struct ie_map_slot {
    uint64_t k1;
    uint32_t k2;
    uint32_t used;
    void *val;
} ie_map_slot;

typedef struct ie_map {
    ie_map_slot *slots;
    size_t cap;   /* power of two */
    size_t count;
} ie_map;

int ie_map_init(ie_map *m);
void ie_map_destroy(ie_map *m);
void *ie_map_get(const ie_map *m, uint64_t k1, uint32_t k2);
int ie_map_put(ie_map *m, uint64_t k1, uint32_t k2, void *val);  /* IE_S_* */
void *ie_map_del(ie_map *m, uint64_t k1, uint32_t k2);           /* returns the value or NULL */

/* Whether an outbound SA refuses every packet from now on (hard byte/packet limit reached or
 * sequence space used up): what it refused may wait for the SA that replaces it (loop.c). */
int ie_esp_out_spent(const ie_esp_out *o);

/* Thread CPU time in ns (benchmarks: like openssl speed, not disturbed by preemption). */
uint64_t ie_now_ns(void);

#endif
