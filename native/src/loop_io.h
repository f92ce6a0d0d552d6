/* loop_io.h - the I/O boundary of the two loops (loop.c, macsec_loop.c), for the C unit tests and
 * fuzz harnesses in native/ (not part of the public API, not seen by cffi).  Every read, write and
 * send on the tun/tap and the sockets goes through an ie_io table (libc by default), and the
 * receive processing of one message/frame can be called with a buffer, without a real fd. */
#ifndef IE_LOOP_IO_H
#define IE_LOOP_IO_H

#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "ipsecemu.h"

typedef struct ie_io {
    ssize_t (*read)(int fd, void *buf, size_t len);
    ssize_t (*write)(int fd, const void *buf, size_t len);
    int (*sendmmsg)(int fd, struct mmsghdr *msgs, unsigned int n, int flags);
    ssize_t (*sendmsg)(int fd, const struct msghdr *msg, int flags);
} ie_io;

/* ---- plumbing shared by both loops (loop_common.c) ---- */

/* The per-batch buffers of a loop, both directions. */
typedef struct ie_batch {
    uint8_t *txmem, *rxmem, *txv, *rxv;
    ie_pkt *txp, *rxp;
    struct mmsghdr *txm, *rxm;
    struct iovec *txiov, *rxiov;
} ie_batch;

/* n slots of txstride / rxstride bytes; returns 0 when out of memory (free with ie_batch_free). */
int ie_batch_init(ie_batch *b, uint32_t n, size_t txstride, size_t rxstride);
void ie_batch_free(ie_batch *b);
/* Whether fd is a tun/tap with IFF_VNET_HDR exactly when vnet says so (not a tun: vnet must be 0). */
int ie_vnet_matches(int fd, int vnet);
/* A packet at buf + off of len bytes in a cap-byte buffer, flags cleared. */
void ie_pkt_init(ie_pkt *p, uint8_t *buf, uint32_t off, uint32_t len, uint32_t cap);

/* Writes to the tun/tap: counted as delivered packets or as errors. */
typedef struct ie_devout {
    const ie_io *io;
    int fd;
    uint64_t *ok, *errors;
} ie_devout;
/* ie_vnet_write_fn for ie_vnet_deliver (ctx: an ie_devout); d NULL counts an error. */
void ie_devout_write(void *ctx, uint8_t *d, size_t len, uint32_t pkts);

/* ie_loop_run / ie_mloop_run: step(ctx, poll_ms) until *stop (then cleared); returns 0 or the
 * step's -errno. */
int ie_run_until_stopped(atomic_int *stop, int (*step)(void *ctx, int timeout_ms), void *ctx, int poll_ms);

/* ---- gateway loop ---- */
/* A loop on no devices: cfg's fds are only passed to io; cfg->tun_vnet says whether the tun
 * would carry virtio headers, cfg->offload & IE_LOOP_UDP_GRO whether receives are GRO trains. */
int ie_loop_new_io(const ie_loop_cfg *cfg, ie_esp_out *out, ie_esp_table *in, const ie_io *io, ie_loop **loop);
/* One received message as recvmmsg returned it: len bytes at d, a GRO train of seg-byte
 * datagrams (seg 0: one datagram), trunc: MSG_TRUNC was set.  *k counts the ESP datagrams
 * collected for decap (start at 0); d must stay valid until ie_loop_rx_end(l, *k).
 * cfg->transport: the 40 bytes before d belong to the message too (the IP header is put back there). */
void ie_loop_rx_msg(ie_loop *l, const struct sockaddr_storage *from, uint8_t *d, uint32_t len, uint32_t seg,
                    int trunc, uint32_t *k);
void ie_loop_rx_end(ie_loop *l, uint32_t k);
/* One batch tun -> encap -> send; returns packets read. */
int ie_loop_tun_batch(ie_loop *l);

/* ---- MACsec link loop ---- */
#define IE_MLOOP_RX_OFF 16   /* received frames start this far into their buffer */
int ie_mloop_new_io(const ie_mloop_cfg *cfg, ie_macsec_rx *rx, const ie_io *io, ie_mloop **loop);
/* One frame as recvmmsg on the AF_PACKET socket returned it, at buf + IE_MLOOP_RX_OFF (len
 * bytes; buf holds cap bytes in all); outgoing: PACKET_OUTGOING; trunc: MSG_TRUNC.  buf must
 * stay valid until ie_mloop_rx_end(l, *k). */
void ie_mloop_rx_frame(ie_mloop *l, uint8_t *buf, uint32_t len, uint32_t cap, int outgoing, int trunc,
                       uint32_t *k);
void ie_mloop_rx_end(ie_mloop *l, uint32_t k);
/* One batch tap -> protect -> send; returns frames read. */
int ie_mloop_tap_batch(ie_mloop *l);

#endif
