/* esp.c - ESP (RFC 4303) encap/decap: AES-GCM (RFC 4106), AES-CBC (RFC 3602) and 3DES-CBC
 * (RFC 2451, OpenSSL's DES-EDE3-CBC from the default provider) + HMAC. */
#include <stdlib.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "internal.h"
#include "transport.h"

#define RP_BITS IE_MAX_REPLAY_WINDOW  /* ring bitmap covers the largest window */
#define RP_MASK (RP_BITS - 1)

/* RFC 4303 App. A anti-replay window with ESN inference; mirrors ipsecemu/esp/replay.py. */
typedef struct replay {
    uint32_t size;
    int esn;
    uint64_t top;
    uint64_t bits[RP_BITS / 64];  /* bit (s & RP_MASK) <=> s seen, for s in (top-size, top] */
} replay;

typedef struct esp_sa {
    uint32_t spi;
    int aead, esn;
    uint32_t ivlen, icvlen, block;
    uint8_t salt[4];
    EVP_CIPHER_CTX *ctx;
    EVP_MAC_CTX *mac;
    ie_lifetime lt;
    ie_counters c;
    ie_events ev;
    uint64_t next_seq, max_seq, seq_soft_margin; /* outbound */
    int seq_done;                                /* outbound: the last usable seq was sent */
    replay rp;                                   /* inbound */
} esp_sa;

struct ie_esp_out {
    esp_sa sa;
};

struct ie_esp_table {
    ie_map map;
    ie_counters global;
};

static inline int rp_test(const replay *r, uint64_t s)
{
    return (int)((r->bits[(s & RP_MASK) >> 6] >> (s & 63)) & 1);
}

static inline void rp_set(replay *r, uint64_t s)
{
    r->bits[(s & RP_MASK) >> 6] |= 1ULL << (s & 63);
}

static void rp_init(replay *r, uint32_t size, int esn, uint64_t top)
{
    memset(r, 0, sizeof *r);
    r->size = size;
    r->esn = esn;
    r->top = top;
    rp_set(r, top);  /* "as if top (initially 0, never sent) had been committed" */
}

/* Full sequence number for a wire value; returns 0 if it must be dropped as REPLAY. */
static int rp_check(const replay *r, uint32_t seq_lo, uint64_t *full)
{
    uint64_t seq, diff;

    if (!r->esn) {
        seq = seq_lo;
    } else {
        uint64_t w = r->size ? r->size : (1ULL << 31);
        uint32_t tl = (uint32_t)r->top;
        int64_t th = (int64_t)(r->top >> 32), hi;

        if ((uint64_t)tl >= w - 1)  /* case A: window within one seq_hi epoch */
            hi = (uint64_t)seq_lo >= tl - w + 1 ? th : th + 1;
        else                        /* case B: window straddles the previous epoch */
            hi = seq_lo >= (uint32_t)(tl - w + 1) ? th - 1 : th;
        if (hi < 0 || hi > 0xFFFFFFFFLL) {
            if (r->size)
                return 0;
            hi = hi < 0 ? 0 : 0xFFFFFFFFLL;
        }
        seq = ((uint64_t)hi << 32) | seq_lo;
    }
    *full = seq;
    if (!r->size || seq > r->top)
        return 1;
    diff = r->top - seq;
    return !(diff >= r->size || rp_test(r, seq));
}

static void rp_commit(replay *r, uint64_t seq)
{
    if (seq > r->top) {
        if (seq - r->top >= RP_BITS) {
            memset(r->bits, 0, sizeof r->bits);
        } else {
            uint64_t s;
            for (s = r->top + 1; s < seq; s++)
                r->bits[(s & RP_MASK) >> 6] &= ~(1ULL << (s & 63));
            r->bits[(seq & RP_MASK) >> 6] &= ~(1ULL << (seq & 63));
        }
        rp_set(r, seq);
        r->top = seq;
    } else if (r->size && r->top - seq < r->size) {
        rp_set(r, seq);
    }
}

/* ---- SA setup (any SPI: reserved values are the config layer's business) ---- */

static void sa_destroy(esp_sa *sa)
{
    EVP_CIPHER_CTX_free(sa->ctx);
    EVP_MAC_CTX_free(sa->mac);
    sa->ctx = NULL;
    sa->mac = NULL;
}

static int sa_init(esp_sa *sa, const ie_esp_cfg *cfg, int enc)
{
    static const struct { const char *md; uint32_t keylen, icvlen; } integs[] = {
        [IE_INTEG_HMAC_SHA1_96] = {"SHA1", 20, 12},
        [IE_INTEG_HMAC_SHA256_128] = {"SHA256", 32, 16},
        [IE_INTEG_HMAC_SHA384_192] = {"SHA384", 48, 24},
        [IE_INTEG_HMAC_SHA512_256] = {"SHA512", 64, 32},
    };

    memset(sa, 0, sizeof *sa);
    if (!cfg || cfg->replay_window > IE_MAX_REPLAY_WINDOW || !cfg->enc_key)
        return IE_S_EINVAL;
    sa->spi = cfg->spi;
    sa->esn = cfg->esn != 0;
    sa->lt.soft_bytes = cfg->soft_bytes;
    sa->lt.hard_bytes = cfg->hard_bytes;
    sa->lt.soft_packets = cfg->soft_packets;
    sa->lt.hard_packets = cfg->hard_packets;

    switch (cfg->encr) {
    case IE_ENCR_AES_GCM_8:
    case IE_ENCR_AES_GCM_12:
    case IE_ENCR_AES_GCM_16:
        if (cfg->integ != IE_INTEG_NONE || cfg->enc_key_len < 4)
            return IE_S_EINVAL;
        sa->aead = 1;
        sa->ivlen = 8;
        sa->block = 4;
        sa->icvlen = cfg->encr == IE_ENCR_AES_GCM_8 ? 8 : cfg->encr == IE_ENCR_AES_GCM_12 ? 12 : 16;
        memcpy(sa->salt, cfg->enc_key + cfg->enc_key_len - 4, 4);
        sa->ctx = ie_gcm_new(cfg->enc_key, cfg->enc_key_len - 4, enc);
        if (!sa->ctx)
            return cfg->enc_key_len - 4 == 16 || cfg->enc_key_len - 4 == 24 || cfg->enc_key_len - 4 == 32
                       ? IE_S_ECRYPTO : IE_S_EINVAL;
        return IE_S_OK;
    case IE_ENCR_AES_CBC:
    case IE_ENCR_3DES_CBC: {
        /* the two CBC ciphers differ only in block (= IV) size: 16 for AES, 8 for 3DES */
        const int des = cfg->encr == IE_ENCR_3DES_CBC;
        const EVP_CIPHER *c = des ? (cfg->enc_key_len == 24 ? EVP_des_ede3_cbc() : NULL)
                              : cfg->enc_key_len == 16 ? EVP_aes_128_cbc()
                              : cfg->enc_key_len == 24 ? EVP_aes_192_cbc()
                              : cfg->enc_key_len == 32 ? EVP_aes_256_cbc()
                                                       : NULL;
        EVP_MAC *mac;
        OSSL_PARAM params[2];

        if (!c || cfg->integ < IE_INTEG_HMAC_SHA1_96 || cfg->integ > IE_INTEG_HMAC_SHA512_256 ||
            !cfg->integ_key || cfg->integ_key_len != integs[cfg->integ].keylen)
            return IE_S_EINVAL;
        sa->ivlen = des ? 8 : 16;
        sa->block = sa->ivlen;
        sa->icvlen = integs[cfg->integ].icvlen;
        sa->ctx = EVP_CIPHER_CTX_new();
        if (!sa->ctx)
            return IE_S_ENOMEM;
        if (EVP_CipherInit_ex(sa->ctx, c, NULL, cfg->enc_key, NULL, enc) != 1 ||
            EVP_CIPHER_CTX_set_padding(sa->ctx, 0) != 1)
            goto crypto_err;
        mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (!mac)
            goto crypto_err;
        sa->mac = EVP_MAC_CTX_new(mac);
        EVP_MAC_free(mac);  /* the context keeps its own reference */
        if (!sa->mac)
            goto crypto_err;
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)integs[cfg->integ].md, 0);
        params[1] = OSSL_PARAM_construct_end();
        if (EVP_MAC_init(sa->mac, cfg->integ_key, cfg->integ_key_len, params) != 1)
            goto crypto_err;
        return IE_S_OK;
    crypto_err:
        sa_destroy(sa);
        return IE_S_ECRYPTO;
    }
    default:
        return IE_S_EINVAL;
    }
}

/* HMAC(SPI | seq_lo | IV | ciphertext [| seq_hi]) truncated to icvlen, into out. */
static int sa_hmac(esp_sa *sa, const uint8_t *d, size_t authlen, uint64_t seq, uint8_t *out)
{
    uint8_t full[EVP_MAX_MD_SIZE], hi[4];
    size_t outl = 0;

    if (EVP_MAC_init(sa->mac, NULL, 0, NULL) != 1 || EVP_MAC_update(sa->mac, d, authlen) != 1)
        return 0;
    if (sa->esn) {
        ie_put32(hi, (uint32_t)(seq >> 32));
        if (EVP_MAC_update(sa->mac, hi, 4) != 1)
            return 0;
    }
    if (EVP_MAC_final(sa->mac, full, &outl, sizeof full) != 1 || outl < sa->icvlen)
        return 0;
    memcpy(out, full, sa->icvlen);
    return 1;
}

static inline int sa_aad(const esp_sa *sa, const uint8_t *hdr, uint64_t seq, uint8_t *aad)
{
    memcpy(aad, hdr, 4);
    if (!sa->esn) {
        memcpy(aad + 4, hdr + 4, 4);
        return 8;
    }
    ie_put64(aad + 4, seq);
    return 12;
}

/* ---- outbound ---- */

int ie_esp_out_new(const ie_esp_cfg *cfg, ie_esp_out **out)
{
    ie_esp_out *o;
    int rc;

    *out = NULL;
    o = calloc(1, sizeof *o);
    if (!o)
        return IE_S_ENOMEM;
    rc = sa_init(&o->sa, cfg, 1);
    if (rc != IE_S_OK) {
        free(o);
        return rc;
    }
    o->sa.max_seq = o->sa.esn ? UINT64_MAX : 0xFFFFFFFFULL;
    o->sa.next_seq = cfg->initial_seq ? cfg->initial_seq : 1;
    o->sa.seq_soft_margin = cfg->seq_soft_margin;
    if (!o->sa.esn && o->sa.next_seq > o->sa.max_seq) {
        ie_esp_out_free(o);
        return IE_S_EINVAL;
    }
    *out = o;
    return IE_S_OK;
}

void ie_esp_out_free(ie_esp_out *o)
{
    if (!o)
        return;
    sa_destroy(&o->sa);
    OPENSSL_cleanse(o, sizeof *o);
    free(o);
}

uint64_t ie_esp_out_next_seq(const ie_esp_out *o)
{
    return o->sa.next_seq;
}

int ie_esp_out_exhausted(const ie_esp_out *o)
{
    return o->sa.seq_done;
}

void ie_esp_out_counters(const ie_esp_out *o, ie_counters *out)
{
    *out = o->sa.c;
}

size_t ie_esp_out_events(ie_esp_out *o, uint8_t *codes, size_t max)
{
    return ie_events_pop(&o->sa.ev, codes, max);
}

static uint8_t encap_one(esp_sa *sa, ie_pkt *p)
{
    uint64_t L = p->len, seq = sa->next_seq, ctlen;
    uint32_t pad, hdr = 8 + sa->ivlen, i;
    uint8_t *h, *pt, aad[12], nonce[12];

    if (ie_lifetime_hard_reached(&sa->lt, &sa->c) || sa->seq_done || seq > sa->max_seq) {
        sa->c.exhausted++;
        return IE_EXHAUSTED;
    }
    pad = (uint32_t)((sa->block - (L + 2) % sa->block) % sa->block);
    ctlen = L + pad + 2;
    if (p->off < hdr || L > (1U << 30) || (uint64_t)p->off + ctlen + sa->icvlen > p->cap)
        return IE_TOO_BIG;

    h = p->buf + p->off - hdr;
    pt = p->buf + p->off;
    ie_put32(h, sa->spi);
    ie_put32(h + 4, (uint32_t)seq);
    if (p->iv)
        memcpy(h + 8, p->iv, sa->ivlen);
    else if (sa->aead)
        ie_put64(h + 8, seq);  /* RFC 4106: the counter is a fine unique IV */
    else if (RAND_bytes(h + 8, (int)sa->ivlen) != 1)
        return IE_EXHAUSTED;
    for (i = 0; i < pad; i++)
        pt[L + i] = (uint8_t)(i + 1);
    pt[L + pad] = (uint8_t)pad;
    pt[L + pad + 1] = p->next_header;

    if (sa->aead) {
        int aadlen = sa_aad(sa, h, seq, aad);
        memcpy(nonce, sa->salt, 4);
        memcpy(nonce + 4, h + 8, 8);
        if (!ie_gcm_seal(sa->ctx, nonce, aad, aadlen, pt, (int)ctlen, pt + ctlen, (int)sa->icvlen))
            return IE_EXHAUSTED;
    } else {
        int outl;
        if (EVP_CipherInit_ex(sa->ctx, NULL, NULL, NULL, h + 8, 1) != 1 ||
            EVP_CipherUpdate(sa->ctx, pt, &outl, pt, (int)ctlen) != 1 ||
            !sa_hmac(sa, h, hdr + ctlen, seq, pt + ctlen))
            return IE_EXHAUSTED;
    }
    p->off -= hdr;
    p->len = (uint32_t)(hdr + ctlen + sa->icvlen);
    p->seq = seq;
    p->spi = sa->spi;

    ie_lifetime_account(&sa->lt, &sa->c, &sa->ev, L);
    if (sa->max_seq - seq <= sa->seq_soft_margin)
        ie_event_fire(&sa->ev, IE_EV_SOFT | IE_EV_SEQ);
    if (seq == sa->max_seq) {
        ie_event_fire(&sa->ev, IE_EV_HARD | IE_EV_SEQ);
        sa->seq_done = 1;
    } else {
        sa->next_seq = seq + 1;
    }
    return IE_OK;
}

int ie_esp_out_spent(const ie_esp_out *o)
{
    const esp_sa *sa = &o->sa;

    return ie_lifetime_hard_reached(&sa->lt, &sa->c) || sa->seq_done || sa->next_seq > sa->max_seq;
}

void ie_esp_encap(ie_esp_out *o, ie_pkt *pkts, size_t n, uint8_t *verdicts)
{
    size_t i;
    for (i = 0; i < n; i++) {
        pkts[i].flags = 0;
        verdicts[i] = encap_one(&o->sa, &pkts[i]);
        if (verdicts[i] == IE_OK)
            pkts[i].flags = IE_PKT_DELIVER;
    }
}

/* ---- inbound ---- */

ie_esp_table *ie_esp_table_new(void)
{
    ie_esp_table *t = calloc(1, sizeof *t);
    if (t && ie_map_init(&t->map) != IE_S_OK) {
        free(t);
        return NULL;
    }
    return t;
}

static void in_free(esp_sa *sa)
{
    sa_destroy(sa);
    OPENSSL_cleanse(sa, sizeof *sa);
    free(sa);
}

void ie_esp_table_free(ie_esp_table *t)
{
    size_t i;
    if (!t)
        return;
    for (i = 0; i < t->map.cap; i++)
        if (t->map.slots[i].used)
            in_free(t->map.slots[i].val);
    ie_map_destroy(&t->map);
    free(t);
}

int ie_esp_table_add(ie_esp_table *t, const ie_esp_cfg *cfg)
{
    esp_sa *sa;
    int rc;

    if (!cfg)
        return IE_S_EINVAL;
    if (ie_map_get(&t->map, cfg->spi, 0))
        return IE_S_EEXIST;
    sa = calloc(1, sizeof *sa);
    if (!sa)
        return IE_S_ENOMEM;
    rc = sa_init(sa, cfg, 0);
    if (rc != IE_S_OK) {
        free(sa);
        return rc;
    }
    if (!sa->esn && cfg->initial_seq > 0xFFFFFFFFULL) {
        in_free(sa);
        return IE_S_EINVAL;
    }
    rp_init(&sa->rp, cfg->replay_window, sa->esn, cfg->initial_seq);
    rc = ie_map_put(&t->map, cfg->spi, 0, sa);
    if (rc != IE_S_OK)
        in_free(sa);
    return rc;
}

int ie_esp_table_remove(ie_esp_table *t, uint32_t spi)
{
    esp_sa *sa = ie_map_del(&t->map, spi, 0);
    if (!sa)
        return IE_S_ENOENT;
    in_free(sa);
    return IE_S_OK;
}

size_t ie_esp_table_size(const ie_esp_table *t)
{
    return t->map.count;
}

int ie_esp_table_counters(const ie_esp_table *t, uint32_t spi, ie_counters *out)
{
    const esp_sa *sa = ie_map_get(&t->map, spi, 0);
    if (!sa)
        return IE_S_ENOENT;
    *out = sa->c;
    return IE_S_OK;
}

void ie_esp_table_global_counters(const ie_esp_table *t, ie_counters *out)
{
    *out = t->global;
}

size_t ie_esp_table_events(ie_esp_table *t, uint32_t spi, uint8_t *codes, size_t max)
{
    esp_sa *sa = ie_map_get(&t->map, spi, 0);
    return sa ? ie_events_pop(&sa->ev, codes, max) : 0;
}

static uint8_t decap_one(ie_esp_table *t, ie_pkt *p)
{
    uint8_t *d, *pt, aad[12], nonce[12], icv[32];
    uint32_t L = p->len, hdr, ctlen, padlen, plen, i;
    uint64_t seq;
    esp_sa *sa;

    /* no pointer into buf before the descriptor is known to lie inside it (buf may be NULL) */
    if (L < 8 || (uint64_t)p->off + L > p->cap) {
        t->global.too_short++;
        return IE_TOO_SHORT;
    }
    d = p->buf + p->off;
    p->spi = ie_get32(d);
    sa = ie_map_get(&t->map, p->spi, 0);
    if (!sa) {
        t->global.unknown_sa++;
        return IE_UNKNOWN_SA;
    }
    hdr = 8 + sa->ivlen;
    if (L < hdr + sa->icvlen + sa->block) {
        sa->c.too_short++;
        return IE_TOO_SHORT;
    }
    ctlen = L - hdr - sa->icvlen;
    if (ctlen % sa->block) {
        sa->c.bad_alignment++;
        return IE_BAD_ALIGNMENT;
    }
    if (ie_lifetime_hard_reached(&sa->lt, &sa->c)) {
        sa->c.exhausted++;
        return IE_EXHAUSTED;
    }
    if (!rp_check(&sa->rp, ie_get32(d + 4), &seq)) {
        sa->c.replay++;
        return IE_REPLAY;
    }
    p->seq = seq;
    pt = d + hdr;
    if (sa->aead) {
        int aadlen = sa_aad(sa, d, seq, aad);
        memcpy(nonce, sa->salt, 4);
        memcpy(nonce + 4, d + 8, 8);
        if (!ie_gcm_open(sa->ctx, nonce, aad, aadlen, pt, (int)ctlen, pt + ctlen, (int)sa->icvlen)) {
            sa->c.bad_icv++;
            return IE_BAD_ICV;
        }
    } else {
        int outl;
        if (!sa_hmac(sa, d, hdr + ctlen, seq, icv) || CRYPTO_memcmp(icv, pt + ctlen, sa->icvlen) != 0) {
            sa->c.bad_icv++;
            return IE_BAD_ICV;
        }
        if (EVP_CipherInit_ex(sa->ctx, NULL, NULL, NULL, d + 8, 0) != 1 ||
            EVP_CipherUpdate(sa->ctx, pt, &outl, pt, (int)ctlen) != 1) {
            sa->c.bad_icv++;
            return IE_BAD_ICV;
        }
    }
    padlen = pt[ctlen - 2];
    if (padlen > ctlen - 2) {
        sa->c.bad_padding++;
        return IE_BAD_PADDING;
    }
    plen = ctlen - 2 - padlen;
    for (i = 0; i < padlen; i++) {
        if (pt[plen + i] != (uint8_t)(i + 1)) {
            sa->c.bad_padding++;
            return IE_BAD_PADDING;
        }
    }
    p->next_header = pt[ctlen - 1];
    rp_commit(&sa->rp, seq);
    p->off += hdr;
    p->len = plen;
    if (p->next_header == 59) {
        sa->c.tfc_dummy++;
        p->len = 0;
        return IE_TFC_DUMMY;
    }
    ie_lifetime_account(&sa->lt, &sa->c, &sa->ev, plen);
    p->flags = IE_PKT_DELIVER;
    return IE_OK;
}

/* The out fields of one decap: a packet dropped early must not carry a previous batch's values. */
static inline void decap_reset(ie_pkt *p)
{
    p->flags = 0;
    p->seq = 0;
    p->spi = 0;
    p->next_header = 0;
}

void ie_esp_decap(ie_esp_table *t, ie_pkt *pkts, size_t n, uint8_t *verdicts)
{
    size_t i;
    for (i = 0; i < n; i++) {
        decap_reset(&pkts[i]);
        verdicts[i] = decap_one(t, &pkts[i]);
    }
}

/* ---- transport mode (RFC 4303 §3.1.1): ESP between the IP header and the upper-layer data ---- */

/* A whole IP packet in p: move its header down by the ESP header size, encapsulate the
 * upper-layer data with next header = its protocol, then fix protocol (50), length, checksum. */
static uint8_t encap_transport_one(esp_sa *sa, ie_pkt *p)
{
    ie_ipinfo ip;
    ie_pkt q;
    uint32_t E = 8 + sa->ivlen, O = p->off;
    uint8_t v;

    if ((uint64_t)O + p->len > p->cap || !ie_ip_parse(p->buf + O, p->len, &ip) || ip.fragment) {
        sa->c.bad_header++;
        return IE_BAD_HEADER;
    }
    if (O < E)
        return IE_TOO_BIG;
    q = *p;
    q.off = O + ip.hlen;
    q.len = ip.total - ip.hlen;
    q.next_header = ip.proto;
    memmove(p->buf + O - E, p->buf + O, ip.hlen);
    v = encap_one(sa, &q);
    if (v == IE_OK && !ie_ip_rewrite(p->buf + O - E, &ip, 50, q.len))
        v = IE_TOO_BIG;  /* cannot happen below a 64 KiB MTU; the SA already counted it */
    if (v != IE_OK) {
        memmove(p->buf + O, p->buf + O - E, ip.hlen);  /* the caller gets its packet back */
        return v;
    }
    p->off = O - E;
    p->len = ip.hlen + q.len;
    p->seq = q.seq;
    p->spi = q.spi;
    return IE_OK;
}

void ie_esp_encap_transport(ie_esp_out *o, ie_pkt *pkts, size_t n, uint8_t *verdicts)
{
    size_t i;
    for (i = 0; i < n; i++) {
        pkts[i].flags = 0;
        verdicts[i] = encap_transport_one(&o->sa, &pkts[i]);
        if (verdicts[i] == IE_OK)
            pkts[i].flags = IE_PKT_DELIVER;
    }
}

/* IP | ESP or IP | UDP | ESP (RFC 3948): decapsulate, then move the IP header up to the
 * decrypted data and make it the original packet's (protocol = next header). */
static uint8_t decap_transport_one(ie_esp_table *t, ie_pkt *p)
{
    ie_ipinfo ip;
    ie_pkt q;
    uint32_t espo;
    uint8_t v;
    int udp;

    if ((uint64_t)p->off + p->len > p->cap || !p->len) {
        t->global.too_short++;
        return IE_TOO_SHORT;
    }
    if (!ie_ip_parse(p->buf + p->off, p->len, &ip) || ip.fragment || (ip.proto != 50 && ip.proto != 17)) {
        t->global.bad_header++;
        return IE_BAD_HEADER;
    }
    udp = ip.proto == 17;
    espo = ip.hlen + (udp ? 8 : 0);
    if (espo > ip.total) {
        t->global.too_short++;
        return IE_TOO_SHORT;
    }
    q = *p;
    q.off = p->off + espo;
    q.len = ip.total - espo;
    v = decap_one(t, &q);
    p->spi = q.spi;
    p->seq = q.seq;
    p->next_header = q.next_header;
    if (v != IE_OK && v != IE_TFC_DUMMY)
        return v;
    /* q.off >= p->off + espo + 8 >= p->off + hlen: the header moves up, never below the start */
    memmove(p->buf + q.off - ip.hlen, p->buf + p->off, ip.hlen);
    p->off = q.off - ip.hlen;
    ie_ip_rewrite(p->buf + p->off, &ip, q.next_header, q.len);  /* shorter than before: fits */
    p->len = ip.hlen + q.len;
    if (udp && v == IE_OK) {
        ip.total = p->len;
        ip.proto = q.next_header;
        ie_l4_csum_fix(p->buf + p->off, &ip);  /* the sender summed its own (pre-NAT) addresses */
    }
    p->flags = q.flags;
    return v;
}

void ie_esp_decap_transport(ie_esp_table *t, ie_pkt *pkts, size_t n, uint8_t *verdicts)
{
    size_t i;
    for (i = 0; i < n; i++) {
        decap_reset(&pkts[i]);
        verdicts[i] = decap_transport_one(t, &pkts[i]);
    }
}
