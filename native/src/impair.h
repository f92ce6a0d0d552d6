/* impair.h - the clock-free core of the link impairment element (impair.c): one direction's
 * pipe (loss/duplicate/corrupt at arrival, a timing wheel for delay/jitter/reorder, a token bucket
 * for the rate) driven by explicit timestamps, so native/tests/impair_tool.c can run it on a fake
 * clock.  Not in the cffi CDEF. */
#ifndef IE_IMPAIR_H
#define IE_IMPAIR_H

#include <stdint.h>

#include "ipsecemu.h"

#define IE_IMP_NONE UINT32_MAX

typedef struct ie_imp_pipe ie_imp_pipe;

/* pool: frames the pipe may hold at once; max_frame: bytes each. */
ie_imp_pipe *ie_imp_pipe_new(uint32_t max_frame, uint32_t pool, uint64_t seed);
void ie_imp_pipe_free(ie_imp_pipe *p);
/* Refuses (IE_S_EINVAL) delay + jitter above IE_IMP_MAX_DELAY_NS or ppm above 10^6. */
int ie_imp_pipe_set(ie_imp_pipe *p, const ie_imp_dir_cfg *cfg);
void ie_imp_pipe_get(const ie_imp_pipe *p, ie_imp_dir_cfg *out);
void ie_imp_pipe_stats(const ie_imp_pipe *p, ie_imp_stats *out);
/* A frame arrived at now_ns: returns how many copies were queued (0: dropped, counted). */
int ie_imp_pipe_push(ie_imp_pipe *p, const uint8_t *frame, uint32_t len, uint64_t now_ns);
/* Up to max frames due at now_ns (rate permitting), oldest first: their slot ids in ids. */
uint32_t ie_imp_pipe_pop(ie_imp_pipe *p, uint64_t now_ns, uint32_t *ids, uint32_t max);
uint8_t *ie_imp_pipe_data(ie_imp_pipe *p, uint32_t id, uint32_t *len);
/* Give a popped slot back; sent != 0 counts it as passed. */
void ie_imp_pipe_release(ie_imp_pipe *p, uint32_t id, int sent);
/* When something will be due next (UINT64_MAX: nothing queued). */
uint64_t ie_imp_pipe_next_ns(ie_imp_pipe *p, uint64_t now_ns);

#endif
