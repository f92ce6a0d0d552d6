/* loop_policy.h - the gateway loop's selectors (RFC 4301 section 4.4.1, RFC 7296 section 3.13.1):
 * which Child SA a packet read from tun leaves on, and whether a decapsulated packet fits the
 * selectors of the SA it arrived on.  Owned by loop.c; kept apart so it can be tested and fuzzed
 * on its own. */
#ifndef IE_LOOP_POLICY_H
#define IE_LOOP_POLICY_H

#include <stdint.h>

#include "ipsecemu.h"

#define IE_POL_NONE 0xFFFFu  /* no outbound slot matches */

typedef struct ie_ts_set {
    uint32_t n;
    ie_ts ts[IE_LOOP_MAX_TS];
} ie_ts_set;

typedef struct ie_out_pol {
    ie_esp_out *out;         /* NULL: slot unused */
    ie_ts_set local, remote; /* packet source in local, destination in remote */
} ie_out_pol;

typedef struct ie_in_pol {
    uint32_t spi;            /* 0: entry unused (SPI 0 is reserved, RFC 4303) */
    ie_ts_set local, remote; /* packet source in remote, destination in local */
} ie_in_pol;

typedef struct ie_policies {
    uint32_t nout;           /* highest used outbound slot + 1 (0: no policies, the loop's one SA) */
    uint32_t nin;            /* inbound entries in use (packed at the front) */
    uint32_t last_in;        /* index of the last inbound hit: trains of one SA look it up once */
    ie_out_pol out[IE_LOOP_MAX_POLICIES];
    ie_in_pol in[IE_LOOP_MAX_IN_POLICIES];
} ie_policies;

/* the slot a packet from tun leaves on (lowest matching slot), or IE_POL_NONE */
uint32_t ie_pol_out_lookup(const ie_policies *p, const uint8_t *pkt, uint32_t len);
/* 1: SA `spi` has no selectors registered here, or the packet fits them; 0: outside them */
int ie_pol_in_ok(ie_policies *p, uint32_t spi, const uint8_t *pkt, uint32_t len);
int ie_pol_set_out(ie_policies *p, uint32_t slot, ie_esp_out *out, const ie_ts *local, uint32_t nlocal,
                   const ie_ts *remote, uint32_t nremote);
int ie_pol_set_in(ie_policies *p, uint32_t spi, const ie_ts *local, uint32_t nlocal, const ie_ts *remote,
                  uint32_t nremote);
int ie_pol_del_in(ie_policies *p, uint32_t spi);

#endif
