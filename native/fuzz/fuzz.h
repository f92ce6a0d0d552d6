/* fuzz.h - shared by the libFuzzer harnesses: a reader over the fuzz input (the input chooses SA
 * settings, batch sizes, headroom and capacity), and the fixed keys the seed corpus generator
 * (make_corpus.py) uses with the project's own ESP/MACsec code, so seeds get past the ICV. */
#ifndef IE_FUZZ_H
#define IE_FUZZ_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipsecemu.h"

typedef struct fz {
    const uint8_t *p;
    size_t n;
} fz;

static inline uint8_t fz_u8(fz *f)
{
    if (!f->n)
        return 0;
    f->n--;
    return *f->p++;
}

static inline uint16_t fz_u16(fz *f)
{
    uint16_t hi = fz_u8(f);
    return (uint16_t)(hi << 8 | fz_u8(f));
}

static inline uint32_t fz_u32(fz *f)
{
    uint32_t hi = fz_u16(f);
    return hi << 16 | fz_u16(f);
}

/* Up to want bytes of the input (fewer at its end); *got says how many. */
static inline const uint8_t *fz_bytes(fz *f, size_t want, size_t *got)
{
    const uint8_t *p = f->p;

    *got = want < f->n ? want : f->n;
    f->p += *got;
    f->n -= *got;
    return p;
}

/* A chunk: a 16-bit length, then that many bytes (fewer at the end of the input). */
static inline const uint8_t *fz_chunk(fz *f, size_t *got)
{
    return fz_bytes(f, fz_u16(f), got);
}

/* Touch every byte of [p, p+n) so ASan checks the whole range handed on. */
static inline uint8_t fz_touch(const uint8_t *p, size_t n)
{
    uint8_t x = 0;
    size_t i;

    for (i = 0; i < n; i++)
        x ^= p[i];
    return x;
}

/* The keys of make_corpus.py: byte i of the encryption key / SAK is 0x10 + i, of the
 * integrity key 0x40 + i; the ESP SPI is FUZZ_SPI; MACsec SCI FUZZ_SCI, salt 0x70 + i. */
#define FUZZ_SPI 0x1000u
#define FUZZ_SCI 0x0200000000010001ULL
static const uint8_t fuzz_enc_key[36] = {
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
    0x30, 0x31, 0x32, 0x33};
static const uint8_t fuzz_integ_key[64] = {
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f,
    0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f,
    0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
    0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7c, 0x7d, 0x7e, 0x7f};
static const uint8_t fuzz_salt[12] = {0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x7b};

/* ESP SA settings from one byte: bits 0-1 encr (GCM-16, GCM-8, GCM-12, CBC), bits 2-3 integ
 * for CBC (SHA1-96, SHA256-128, SHA384-192, SHA512-256), bit 4 ESN, bit 5 window 4096 (else 64),
 * bit 6 AES-256 (else 128), bit 7 3DES-CBC instead (integ from bits 2-3). */
static inline ie_esp_cfg fuzz_esp_cfg(uint8_t b)
{
    static const int encr[4] = {IE_ENCR_AES_GCM_16, IE_ENCR_AES_GCM_8, IE_ENCR_AES_GCM_12, IE_ENCR_AES_CBC};
    static const uint32_t integ_len[5] = {0, 20, 32, 48, 64};
    ie_esp_cfg c;
    uint32_t aes = b & 64 ? 32 : 16;

    memset(&c, 0, sizeof c);
    c.spi = FUZZ_SPI;
    c.encr = b & 128 ? IE_ENCR_3DES_CBC : encr[b & 3];
    c.enc_key = fuzz_enc_key;
    if (c.encr == IE_ENCR_AES_CBC || c.encr == IE_ENCR_3DES_CBC) {
        c.enc_key_len = c.encr == IE_ENCR_3DES_CBC ? 24 : aes;
        c.integ = 1 + ((b >> 2) & 3);
        c.integ_key = fuzz_integ_key;
        c.integ_key_len = integ_len[c.integ];
    } else {
        c.enc_key_len = aes + 4;  /* key || salt */
    }
    c.esn = !!(b & 16);
    c.replay_window = b & 32 ? 4096 : 64;
    c.seq_soft_margin = 16;
    return c;
}

/* MACsec settings from one byte: bits 0-1 cipher (GCM-AES-128, -256, XPN-128, XPN-256), bit 2
 * include SCI, bit 3 end station, bit 4 confidentiality off, bits 5-6 validate (strict, check,
 * disabled, strict), bit 7 replay window 4096 (else 64); and the SA with an AN. */
static inline void fuzz_macsec_cfg(uint8_t b, uint8_t an, ie_secy_cfg *secy, ie_macsec_sa_cfg *sa)
{
    static const int validate[4] = {IE_VALIDATE_STRICT, IE_VALIDATE_CHECK, IE_VALIDATE_DISABLED,
                                    IE_VALIDATE_STRICT};
    int cipher = 1 + (b & 3);

    memset(secy, 0, sizeof *secy);
    memset(sa, 0, sizeof *sa);
    secy->include_sci = !!(b & 4);
    secy->end_station = !!(b & 8);
    secy->confidentiality = !(b & 16);
    secy->replay_protect = 1;
    secy->replay_window = b & 128 ? 4096 : 64;
    secy->validate = validate[(b >> 5) & 3];
    secy->pn_exhaustion_threshold = 0xC0000000u;
    sa->cipher = cipher;
    sa->sak = fuzz_enc_key;
    sa->sak_len = cipher == IE_MACSEC_GCM_AES_128 || cipher == IE_MACSEC_GCM_AES_XPN_128 ? 16 : 32;
    sa->sci = FUZZ_SCI;
    sa->an = an & 3;
    if (cipher >= IE_MACSEC_GCM_AES_XPN_128) {
        sa->ssci = 1;
        sa->salt = fuzz_salt;
    }
    sa->next_pn = 1;
}

#endif
