/* macsec.c - MACsec (IEEE 802.1AE) protect/validate with GCM-AES-128/256 and XPN (802.1AEbw). */
#include <stdlib.h>

#include <openssl/crypto.h>

#include "internal.h"

#define ETH_MACSEC 0x88E5
#define ICV_LEN 16
#define TCI_V 0x80
#define TCI_ES 0x40
#define TCI_SC 0x20
#define TCI_SCB 0x10
#define TCI_E 0x08
#define TCI_C 0x04

typedef struct msa {
    EVP_CIPHER_CTX *ctx;
    int xpn;
    uint64_t sci;
    uint8_t an;
    uint32_t ssci;
    uint8_t salt[12];
    uint64_t next_pn;
    ie_counters c;
} msa;

struct ie_macsec_tx {
    msa sa;
    ie_secy_cfg secy;
    uint8_t tci;
    uint64_t soft_at_m1;  /* fire the soft event once pn >= soft_at - 1 */
    int soft_mode;        /* 0: use soft_at_m1, 1: always, 2: never */
    int pn_done;
    ie_events ev;
};

struct ie_macsec_rx {
    ie_secy_cfg secy;
    ie_map map;
    ie_counters c;
};

static int msa_init(msa *sa, const ie_macsec_sa_cfg *cfg, int enc)
{
    uint32_t keylen;

    memset(sa, 0, sizeof *sa);
    if (!cfg || !cfg->sak || cfg->an > 3)
        return IE_S_EINVAL;
    switch (cfg->cipher) {
    case IE_MACSEC_GCM_AES_128: keylen = 16; break;
    case IE_MACSEC_GCM_AES_256: keylen = 32; break;
    case IE_MACSEC_GCM_AES_XPN_128: keylen = 16; sa->xpn = 1; break;
    case IE_MACSEC_GCM_AES_XPN_256: keylen = 32; sa->xpn = 1; break;
    default: return IE_S_EINVAL;
    }
    if (cfg->sak_len != keylen || (sa->xpn && !cfg->salt) || cfg->next_pn == 0 ||
        (!sa->xpn && cfg->next_pn > 0xFFFFFFFFULL))
        return IE_S_EINVAL;
    sa->sci = cfg->sci;
    sa->an = cfg->an;
    sa->next_pn = cfg->next_pn;
    if (sa->xpn) {
        sa->ssci = cfg->ssci;
        memcpy(sa->salt, cfg->salt, 12);
    }
    sa->ctx = ie_gcm_new(cfg->sak, keylen, enc);
    return sa->ctx ? IE_S_OK : IE_S_ECRYPTO;
}

static void msa_free(msa *sa)
{
    EVP_CIPHER_CTX_free(sa->ctx);
    OPENSSL_cleanse(sa, sizeof *sa);
}

static inline void msa_iv(const msa *sa, uint64_t pn, uint8_t iv[12])
{
    if (!sa->xpn) {
        ie_put64(iv, sa->sci);
        ie_put32(iv + 8, (uint32_t)pn);
    } else {
        int i;
        ie_put32(iv, sa->ssci);
        ie_put64(iv + 4, pn);
        for (i = 0; i < 12; i++)
            iv[i] ^= sa->salt[i];
    }
}

static int secy_ok(const ie_secy_cfg *s)
{
    return s && s->validate >= IE_VALIDATE_STRICT && s->validate <= IE_VALIDATE_DISABLED;
}

/* ---- transmit ---- */

int ie_macsec_tx_new(const ie_secy_cfg *secy, const ie_macsec_sa_cfg *cfg, ie_macsec_tx **out)
{
    ie_macsec_tx *tx;
    int rc;

    *out = NULL;
    if (!secy_ok(secy))
        return IE_S_EINVAL;
    tx = calloc(1, sizeof *tx);
    if (!tx)
        return IE_S_ENOMEM;
    rc = msa_init(&tx->sa, cfg, 1);
    if (rc != IE_S_OK) {
        msa_free(&tx->sa);
        free(tx);
        return rc;
    }
    tx->secy = *secy;
    tx->tci = (uint8_t)((secy->include_sci ? TCI_SC : (secy->end_station ? TCI_ES : 0)) |
                        (secy->confidentiality ? TCI_E | TCI_C : 0) | tx->sa.an);
    /* soft when next_pn = pn + 1 >= threshold (XPN: threshold << 32), without 64-bit overflow */
    if (secy->pn_exhaustion_threshold == 0)
        tx->soft_mode = 1;
    else if (tx->sa.xpn && secy->pn_exhaustion_threshold > (1ULL << 32))
        tx->soft_mode = 2;
    else
        tx->soft_at_m1 = (tx->sa.xpn ? secy->pn_exhaustion_threshold << 32 : secy->pn_exhaustion_threshold) - 1;
    *out = tx;
    return IE_S_OK;
}

void ie_macsec_tx_free(ie_macsec_tx *tx)
{
    if (!tx)
        return;
    msa_free(&tx->sa);
    free(tx);
}

uint64_t ie_macsec_tx_next_pn(const ie_macsec_tx *tx)
{
    return tx->sa.next_pn;
}

int ie_macsec_tx_exhausted(const ie_macsec_tx *tx)
{
    return tx->pn_done;
}

void ie_macsec_tx_counters(const ie_macsec_tx *tx, ie_counters *out)
{
    *out = tx->sa.c;
}

size_t ie_macsec_tx_events(ie_macsec_tx *tx, uint8_t *codes, size_t max)
{
    return ie_events_pop(&tx->ev, codes, max);
}

static uint8_t protect_one(ie_macsec_tx *tx, ie_pkt *p)
{
    msa *sa = &tx->sa;
    uint64_t pn = sa->next_pn, max_pn = sa->xpn ? UINT64_MAX : 0xFFFFFFFFULL;
    uint32_t L = p->len, taglen = tx->secy.include_sci ? 16 : 8, sdlen;
    uint8_t *f, *sd, iv[12];

    if (L < 14) {
        sa->c.too_short++;
        return IE_TOO_SHORT;
    }
    if (tx->pn_done || pn > max_pn) {
        sa->c.exhausted++;
        return IE_EXHAUSTED;
    }
    if (p->off < taglen || L > (1U << 30) || (uint64_t)p->off + L + ICV_LEN > p->cap)
        return IE_TOO_BIG;
    sdlen = L - 12;
    f = p->buf + p->off - taglen;
    memmove(f, f + taglen, 12);  /* DA | SA move into the headroom; secure data stays put */
    f[12] = ETH_MACSEC >> 8;
    f[13] = ETH_MACSEC & 0xFF;
    f[14] = tx->tci;
    f[15] = (uint8_t)(sdlen < 48 ? sdlen : 0);
    ie_put32(f + 16, (uint32_t)pn);
    if (tx->secy.include_sci)
        ie_put64(f + 20, sa->sci);
    sd = f + 12 + taglen;
    msa_iv(sa, pn, iv);
    if (tx->secy.confidentiality) {
        if (!ie_gcm_seal(sa->ctx, iv, f, (int)(12 + taglen), sd, (int)sdlen, sd + sdlen, ICV_LEN))
            return IE_EXHAUSTED;
    } else {
        if (!ie_gcm_seal(sa->ctx, iv, f, (int)(12 + taglen + sdlen), NULL, 0, sd + sdlen, ICV_LEN))
            return IE_EXHAUSTED;
    }
    p->off -= taglen;
    p->len = L + taglen + ICV_LEN;
    p->seq = pn;
    p->sci = sa->sci;
    p->an = sa->an;
    sa->c.packets++;
    sa->c.bytes += sdlen;
    if (tx->soft_mode == 1 || (tx->soft_mode == 0 && pn >= tx->soft_at_m1))
        ie_event_fire(&tx->ev, IE_EV_SOFT | IE_EV_PN);
    if (pn == max_pn) {
        ie_event_fire(&tx->ev, IE_EV_HARD | IE_EV_PN);
        tx->pn_done = 1;  /* next_pn stays at the last PN; the wrapper reports last + 1 */
    } else {
        sa->next_pn = pn + 1;
    }
    return IE_OK;
}

void ie_macsec_protect(ie_macsec_tx *tx, ie_pkt *pkts, size_t n, uint8_t *verdicts)
{
    size_t i;
    for (i = 0; i < n; i++) {
        pkts[i].flags = 0;
        verdicts[i] = protect_one(tx, &pkts[i]);
        if (verdicts[i] == IE_OK)
            pkts[i].flags = IE_PKT_DELIVER;
    }
}

/* ---- receive ---- */

int ie_macsec_rx_new(const ie_secy_cfg *secy, ie_macsec_rx **out)
{
    ie_macsec_rx *rx;

    *out = NULL;
    if (!secy_ok(secy))
        return IE_S_EINVAL;
    rx = calloc(1, sizeof *rx);
    if (!rx)
        return IE_S_ENOMEM;
    if (ie_map_init(&rx->map) != IE_S_OK) {
        free(rx);
        return IE_S_ENOMEM;
    }
    rx->secy = *secy;
    *out = rx;
    return IE_S_OK;
}

void ie_macsec_rx_free(ie_macsec_rx *rx)
{
    size_t i;
    if (!rx)
        return;
    for (i = 0; i < rx->map.cap; i++) {
        if (rx->map.slots[i].used) {
            msa_free(rx->map.slots[i].val);
            free(rx->map.slots[i].val);
        }
    }
    ie_map_destroy(&rx->map);
    free(rx);
}

int ie_macsec_rx_add_sa(ie_macsec_rx *rx, const ie_macsec_sa_cfg *cfg)
{
    msa *sa;
    int rc;

    if (!cfg)
        return IE_S_EINVAL;
    if (ie_map_get(&rx->map, cfg->sci, cfg->an))
        return IE_S_EEXIST;
    sa = calloc(1, sizeof *sa);
    if (!sa)
        return IE_S_ENOMEM;
    rc = msa_init(sa, cfg, 0);
    if (rc == IE_S_OK)
        rc = ie_map_put(&rx->map, cfg->sci, cfg->an, sa);
    if (rc != IE_S_OK) {
        msa_free(sa);
        free(sa);
    }
    return rc;
}

int ie_macsec_rx_remove_sa(ie_macsec_rx *rx, uint64_t sci, uint8_t an)
{
    msa *sa = ie_map_del(&rx->map, sci, an);
    if (!sa)
        return IE_S_ENOENT;
    msa_free(sa);
    free(sa);
    return IE_S_OK;
}

int ie_macsec_rx_sa_counters(const ie_macsec_rx *rx, uint64_t sci, uint8_t an, ie_counters *out)
{
    const msa *sa = ie_map_get(&rx->map, sci, an);
    if (!sa)
        return IE_S_ENOENT;
    *out = sa->c;
    return IE_S_OK;
}

void ie_macsec_rx_counters(const ie_macsec_rx *rx, ie_counters *out)
{
    *out = rx->c;
}

int ie_macsec_rx_next_pn(const ie_macsec_rx *rx, uint64_t sci, uint8_t an, uint64_t *out)
{
    const msa *sa = ie_map_get(&rx->map, sci, an);
    if (!sa)
        return IE_S_ENOENT;
    *out = sa->next_pn;
    return IE_S_OK;
}

static uint8_t validate_one(ie_macsec_rx *rx, ie_pkt *p)
{
    uint8_t *f, *sd, tci, sl, iv[12];
    uint32_t L = p->len, taglen, sdlen, pn32;
    uint64_t sci, pn, lowest;
    int ok;
    msa *sa;

    /* no pointer into buf before the descriptor is known to lie inside it (buf may be NULL) */
    if (L < 14 || (uint64_t)p->off + L > p->cap) {
        rx->c.too_short++;
        return IE_TOO_SHORT;
    }
    f = p->buf + p->off;
    if (f[12] != (ETH_MACSEC >> 8) || f[13] != (ETH_MACSEC & 0xFF)) {
        if (rx->secy.validate == IE_VALIDATE_STRICT) {
            rx->c.not_protected++;
            return IE_NOT_PROTECTED;
        }
        p->flags = IE_PKT_DELIVER;
        return IE_OK;
    }
    if (L < 16) {
        rx->c.too_short++;
        return IE_TOO_SHORT;
    }
    tci = f[14];
    taglen = (tci & TCI_SC) ? 16 : 8;
    if (L < 12 + taglen + ICV_LEN) {
        rx->c.too_short++;
        return IE_TOO_SHORT;
    }
    sl = f[15];
    sdlen = L - 12 - taglen - ICV_LEN;
    p->an = tci & 3;
    if (tci & TCI_SC) {
        p->sci = ie_get64(f + 20);
        p->flags = IE_PKT_HAS_SCI;
    }
    if ((tci & TCI_V) || ((tci & TCI_ES) && (tci & TCI_SC)) || ((tci & TCI_SCB) && (tci & TCI_SC)) ||
        ((tci & TCI_E) && !(tci & TCI_C)) || sl >= 48 || (sl != 0 && sl != sdlen) ||
        (sl == 0 && sdlen < 48)) {
        rx->c.bad_header++;
        return IE_BAD_HEADER;
    }
    if (tci & TCI_SC)
        sci = ie_get64(f + 20);
    else  /* implicit SCI: source MAC | port 1 */
        sci = (((uint64_t)ie_get32(f + 6) << 16 | (uint64_t)f[10] << 8 | f[11]) << 16) | 1;
    p->sci = sci;
    p->flags = IE_PKT_HAS_SCI;
    pn32 = ie_get32(f + 16);
    sa = ie_map_get(&rx->map, sci, p->an);
    if (!sa) {
        rx->c.unknown_sa++;
        p->seq = pn32;
        return IE_UNKNOWN_SA;
    }
    lowest = sa->next_pn > rx->secy.replay_window ? sa->next_pn - rx->secy.replay_window : 1;
    if (!sa->xpn) {
        if (pn32 == 0) {
            sa->c.bad_header++;
            return IE_BAD_HEADER;
        }
        pn = pn32;
    } else {
        uint64_t hi = lowest >> 32;
        if (pn32 < (uint32_t)lowest) {
            if (hi == 0xFFFFFFFFULL) {  /* would need PN >= 2^64 */
                sa->c.bad_header++;
                return IE_BAD_HEADER;
            }
            hi++;
        }
        pn = hi << 32 | pn32;
        if (pn == 0) {
            sa->c.bad_header++;
            return IE_BAD_HEADER;
        }
    }
    p->seq = pn;
    if (rx->secy.replay_protect && pn < lowest) {
        sa->c.replay++;
        return IE_REPLAY;
    }
    sd = f + 12 + taglen;
    if (tci & TCI_E) {
        msa_iv(sa, pn, iv);
        ok = ie_gcm_open(sa->ctx, iv, f, (int)(12 + taglen), sd, (int)sdlen, sd + sdlen, ICV_LEN);
    } else if (rx->secy.validate == IE_VALIDATE_DISABLED) {
        ok = 1;  /* integrity-only frames are stripped unchecked */
    } else {
        msa_iv(sa, pn, iv);
        ok = ie_gcm_open(sa->ctx, iv, f, (int)(12 + taglen + sdlen), NULL, 0, sd + sdlen, ICV_LEN);
    }
    /* strip the SecTAG: DA | SA move forward onto it; the ICV is cut off by len */
    if (!ok && ((tci & TCI_E) || rx->secy.validate == IE_VALIDATE_STRICT)) {
        sa->c.bad_icv++;
        return IE_BAD_ICV;
    }
    memmove(f + taglen, f, 12);
    p->off += taglen;
    p->len = 12 + sdlen;
    p->flags |= IE_PKT_DELIVER;
    if (!ok) {  /* "check" mode, integrity only: delivered but flagged */
        sa->c.bad_icv++;
        return IE_BAD_ICV;
    }
    if (pn + 1 > sa->next_pn || pn == UINT64_MAX)
        sa->next_pn = pn == UINT64_MAX ? UINT64_MAX : pn + 1;
    sa->c.packets++;
    sa->c.bytes += sdlen;
    return IE_OK;
}

void ie_macsec_validate(ie_macsec_rx *rx, ie_pkt *pkts, size_t n, uint8_t *verdicts)
{
    size_t i;
    for (i = 0; i < n; i++) {
        pkts[i].flags = 0;
        pkts[i].seq = 0;
        pkts[i].sci = 0;
        pkts[i].an = 0;
        verdicts[i] = validate_one(rx, &pkts[i]);
    }
}
