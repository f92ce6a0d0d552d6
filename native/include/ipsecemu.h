/* ipsecemu.h - the whole C API of the ipsecemu data-plane fast path.
 *
 * ESP (RFC 4303, AES-GCM RFC 4106, AES-CBC RFC 3602 / 3DES-CBC RFC 2451 + HMAC-SHA1/SHA2) and MACsec (IEEE 802.1AE,
 * GCM-AES-128/256 and XPN) transforms over batches of caller-owned packet buffers, in place.
 * The exact per-packet semantics are those of ipsecemu/dataplane/api.py; the Python wrapper is
 * the ipsecemu/dataplane/native/ package.
 *
 * Buffers: each packet is an ie_pkt descriptor (buf, off, len, cap).  Encap/protect grow the
 * packet into the headroom (buf[0..off)) and tailroom (buf[off+len..cap)); decap/validate shrink
 * it.  No function allocates per packet.
 *
 * Thread-safety (cffi releases the GIL during every call):
 *   - An SA direction (ie_esp_out, ie_macsec_tx, one ie_esp_table, one ie_macsec_rx) is used by one
 *     thread at a time; different SAs/tables may run on different threads concurrently.
 *   - Table add/remove must not run concurrently with decap/validate on the same table (the caller
 *     serialises them, e.g. the gateway applies IKE updates between batches).
 *   - Counter and next_seq/next_pn reads are plain loads: from another thread they may be a
 *     packet or a batch stale.  Event polling (ie_*_events) is a lock-free single-consumer ring:
 *     one control thread may poll while the data-path thread runs.
 *
 * Everything between the CDEF markers is fed to cffi's cdef verbatim, so it must stay plain C
 * declarations (no #include, no #if, no OpenSSL types).
 */
#ifndef IPSECEMU_H
#define IPSECEMU_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
#define IE_ABI_VERSION 1

/* Per-packet verdicts: the same numbers as ipsecemu.dataplane.api.Verdict. */
enum ie_verdict {
    IE_OK = 0,
    IE_BAD_ICV = 1,
    IE_REPLAY = 2,
    IE_TOO_SHORT = 3,
    IE_BAD_PADDING = 4,
    IE_UNKNOWN_SA = 5,
    IE_EXHAUSTED = 6,
    IE_TFC_DUMMY = 7,
    IE_TOO_BIG = 8,
    IE_BAD_HEADER = 9,
    IE_NOT_PROTECTED = 10,
    IE_BAD_ALIGNMENT = 11
};

/* Return codes of setup calls (not per-packet). */
enum ie_status {
    IE_S_OK = 0,
    IE_S_EINVAL = -1,  /* bad algorithm / key length / field */
    IE_S_ENOMEM = -2,
    IE_S_ECRYPTO = -3, /* libcrypto refused the key or algorithm */
    IE_S_EEXIST = -4,  /* table already holds this SPI / (SCI, AN) */
    IE_S_ENOENT = -5   /* no such SPI / (SCI, AN) */
};

/* ESP algorithms covered by C (others fall back to the Python reference). */
enum ie_esp_encr {
    IE_ENCR_AES_GCM_8 = 1,
    IE_ENCR_AES_GCM_12 = 2,
    IE_ENCR_AES_GCM_16 = 3,
    IE_ENCR_AES_CBC = 4,
    IE_ENCR_3DES_CBC = 5     /* 24-byte key, 8-byte IV and block */
};
enum ie_esp_integ {
    IE_INTEG_NONE = 0,
    IE_INTEG_HMAC_SHA1_96 = 1,
    IE_INTEG_HMAC_SHA256_128 = 2,
    IE_INTEG_HMAC_SHA384_192 = 3,
    IE_INTEG_HMAC_SHA512_256 = 4
};
enum ie_macsec_cipher {
    IE_MACSEC_GCM_AES_128 = 1,
    IE_MACSEC_GCM_AES_256 = 2,
    IE_MACSEC_GCM_AES_XPN_128 = 3,
    IE_MACSEC_GCM_AES_XPN_256 = 4
};
enum ie_validate_mode {
    IE_VALIDATE_STRICT = 0,
    IE_VALIDATE_CHECK = 1,
    IE_VALIDATE_DISABLED = 2
};

/* Expire events: code = kind | reason. */
#define IE_EV_SOFT 16
#define IE_EV_HARD 32
#define IE_EV_BYTES 1
#define IE_EV_PACKETS 2
#define IE_EV_SEQ 3
#define IE_EV_PN 4

/* Room the caller must leave around a packet (worst case over all algorithms). */
#define IE_ESP_HEADROOM 24   /* SPI + seq + 16-byte CBC IV */
#define IE_ESP_TAILROOM 64   /* up to 15 pad + pad_len + next_header + 32-byte ICV, rounded */
#define IE_MACSEC_HEADROOM 16 /* SecTAG with SCI */
#define IE_MACSEC_TAILROOM 16 /* ICV */
#define IE_MAX_REPLAY_WINDOW 4096

/* ie_pkt.flags (out) */
#define IE_PKT_DELIVER 1     /* [off, off+len) holds a payload/frame to hand on */
#define IE_PKT_HAS_SCI 2     /* MACsec validate: sci/an are set */

typedef struct ie_pkt {
    uint8_t *buf;            /* caller-owned buffer */
    uint32_t off;            /* in/out: start of the packet in buf */
    uint32_t len;            /* in/out: packet length */
    uint32_t cap;            /* size of buf */
    uint8_t next_header;     /* ESP encap: in; ESP decap: out */
    uint8_t an;              /* MACsec validate: out */
    uint8_t flags;           /* out: IE_PKT_* */
    uint8_t reserved;
    uint32_t spi;            /* ESP decap: out */
    uint64_t seq;            /* out: ESP full sequence number / MACsec full PN */
    uint64_t sci;            /* MACsec validate: out (big-endian SCI as an integer) */
    const uint8_t *iv;       /* ESP encap: injected IV (8 GCM / 16 CBC bytes) or NULL */
} ie_pkt;

/* Same field order as ipsecemu.dataplane.api.SaCounters. */
typedef struct ie_counters {
    uint64_t packets;
    uint64_t bytes;
    uint64_t bad_icv;
    uint64_t replay;
    uint64_t too_short;
    uint64_t bad_padding;
    uint64_t bad_header;
    uint64_t bad_alignment;
    uint64_t tfc_dummy;
    uint64_t exhausted;
    uint64_t not_protected;
    uint64_t unknown_sa;
} ie_counters;

typedef struct ie_esp_cfg {
    uint32_t spi;
    int encr;                /* enum ie_esp_encr */
    int integ;               /* enum ie_esp_integ (IE_INTEG_NONE for GCM) */
    const uint8_t *enc_key;  /* GCM: key || 4-byte salt */
    uint32_t enc_key_len;
    const uint8_t *integ_key;
    uint32_t integ_key_len;
    int esn;
    uint32_t replay_window;  /* inbound: 0..IE_MAX_REPLAY_WINDOW */
    uint64_t soft_bytes, hard_bytes, soft_packets, hard_packets; /* 0 = unlimited */
    uint64_t seq_soft_margin;
    uint64_t initial_seq;    /* outbound: first sequence number (>= 1); inbound: window top */
} ie_esp_cfg;

typedef struct ie_secy_cfg {
    int include_sci;
    int end_station;
    int confidentiality;
    int replay_protect;
    uint32_t replay_window;
    int validate;            /* enum ie_validate_mode */
    uint64_t pn_exhaustion_threshold; /* TX soft event when next PN reaches it (XPN: << 32) */
} ie_secy_cfg;

typedef struct ie_macsec_sa_cfg {
    int cipher;              /* enum ie_macsec_cipher */
    const uint8_t *sak;
    uint32_t sak_len;
    uint64_t sci;            /* big-endian SCI as an integer */
    uint8_t an;
    uint32_t ssci;           /* XPN only */
    const uint8_t *salt;     /* XPN only: 12 bytes */
    uint64_t next_pn;
} ie_macsec_sa_cfg;

typedef struct ie_esp_out ie_esp_out;
typedef struct ie_esp_table ie_esp_table;
typedef struct ie_macsec_tx ie_macsec_tx;
typedef struct ie_macsec_rx ie_macsec_rx;

int ie_abi_version(void);

/* Wrapper helpers: lay out n packets back to back in one buffer (packet i's data at
 * base + sum of earlier (head + lens[j] + tail) + head), and read back where each result
 * lies as (offset from base, length) pairs; keeps per-packet work out of Python. */
void ie_pkts_layout(ie_pkt *pkts, size_t n, uint8_t *base, const uint32_t *lens, uint32_t head,
                    uint32_t tail, uint8_t next_header);
void ie_pkts_spans(const ie_pkt *pkts, size_t n, const uint8_t *base, uint64_t *spans);

/* ESP outbound SA: the only owner of its sequence counter. */
int ie_esp_out_new(const ie_esp_cfg *cfg, ie_esp_out **out);
void ie_esp_out_free(ie_esp_out *sa);
/* Encapsulate pkts[i] (payload, next_header) into SPI..ICV in place; verdicts[i] per packet. */
void ie_esp_encap(ie_esp_out *sa, ie_pkt *pkts, size_t n, uint8_t *verdicts);
/* Next sequence number; after the last one (2^32-1 / 2^64-1) was used it stays there and
 * ie_esp_out_exhausted() returns 1. */
uint64_t ie_esp_out_next_seq(const ie_esp_out *sa);
int ie_esp_out_exhausted(const ie_esp_out *sa);
void ie_esp_out_counters(const ie_esp_out *sa, ie_counters *out);
/* Pop up to max pending expire event codes (firing order); returns how many. */
size_t ie_esp_out_events(ie_esp_out *sa, uint8_t *codes, size_t max);

/* ESP inbound SAD keyed by SPI (O(1) open-addressing hash). */
ie_esp_table *ie_esp_table_new(void);
void ie_esp_table_free(ie_esp_table *t);
int ie_esp_table_add(ie_esp_table *t, const ie_esp_cfg *cfg);
int ie_esp_table_remove(ie_esp_table *t, uint32_t spi);
size_t ie_esp_table_size(const ie_esp_table *t);
/* Decapsulate ESP packets in place: on OK/TFC the payload is [off, off+len). */
void ie_esp_decap(ie_esp_table *t, ie_pkt *pkts, size_t n, uint8_t *verdicts);
/* Transport mode (RFC 4303 §3.1.1).  Encap: pkts[i] is a whole IPv4/IPv6 packet (headroom
 * IE_ESP_HEADROOM); ESP goes between its IP header (IPv4 options / IPv6 extension headers
 * kept) and the upper-layer data, next header = the old protocol; protocol 50, lengths and the
 * IPv4 checksum are rewritten.  Fragments and malformed headers: BAD_HEADER (SA bad_header).
 * Decap: pkts[i] is IP | ESP, or IP | UDP | ESP (RFC 3948); on OK it becomes the original
 * packet (protocol = next header, lengths and checksum fixed); after UDP encapsulation the
 * TCP/UDP checksum is recomputed (RFC 3948 §3.1.3: NAT changed the addresses it covers). */
void ie_esp_encap_transport(ie_esp_out *sa, ie_pkt *pkts, size_t n, uint8_t *verdicts);
void ie_esp_decap_transport(ie_esp_table *t, ie_pkt *pkts, size_t n, uint8_t *verdicts);
int ie_esp_table_counters(const ie_esp_table *t, uint32_t spi, ie_counters *out);
/* Drops not tied to a known SA (UNKNOWN_SA, packets too short to hold an SPI). */
void ie_esp_table_global_counters(const ie_esp_table *t, ie_counters *out);
size_t ie_esp_table_events(ie_esp_table *t, uint32_t spi, uint8_t *codes, size_t max);

/* MACsec transmit SA. */
int ie_macsec_tx_new(const ie_secy_cfg *secy, const ie_macsec_sa_cfg *sa, ie_macsec_tx **out);
void ie_macsec_tx_free(ie_macsec_tx *tx);
void ie_macsec_protect(ie_macsec_tx *tx, ie_pkt *pkts, size_t n, uint8_t *verdicts);
uint64_t ie_macsec_tx_next_pn(const ie_macsec_tx *tx);  /* as ie_esp_out_next_seq */
int ie_macsec_tx_exhausted(const ie_macsec_tx *tx);
void ie_macsec_tx_counters(const ie_macsec_tx *tx, ie_counters *out);
size_t ie_macsec_tx_events(ie_macsec_tx *tx, uint8_t *codes, size_t max);

/* MACsec receive SecY: SAs keyed by (SCI, AN). */
int ie_macsec_rx_new(const ie_secy_cfg *secy, ie_macsec_rx **out);
void ie_macsec_rx_free(ie_macsec_rx *rx);
int ie_macsec_rx_add_sa(ie_macsec_rx *rx, const ie_macsec_sa_cfg *sa);
int ie_macsec_rx_remove_sa(ie_macsec_rx *rx, uint64_t sci, uint8_t an);
void ie_macsec_validate(ie_macsec_rx *rx, ie_pkt *pkts, size_t n, uint8_t *verdicts);
int ie_macsec_rx_sa_counters(const ie_macsec_rx *rx, uint64_t sci, uint8_t an, ie_counters *out);
void ie_macsec_rx_counters(const ie_macsec_rx *rx, ie_counters *out);
int ie_macsec_rx_next_pn(const ie_macsec_rx *rx, uint64_t sci, uint8_t an, uint64_t *out);

/* Benchmarks without Python per packet: n packets of `size` payload bytes, encap then decap
 * (protect then validate) `iterations` times; ns[0] = total encap ns, ns[1] = total decap ns.
 * Times are thread CPU time (as openssl speed measures), so other load on the box hurts less.
 * Returns the number of packets that did not come back OK (0 on success), or -1 on setup error. */
long ie_bench_esp(const ie_esp_cfg *cfg, uint32_t size, uint32_t n, uint32_t iterations, uint64_t *ns);
long ie_bench_macsec(const ie_secy_cfg *secy, const ie_macsec_sa_cfg *sa, uint32_t size, uint32_t n,
                     uint32_t iterations, uint64_t *ns);
/* ---- Gateway batch loop (ESP-in-UDP, RFC 3948) ----
 * tun -> encap -> sendmmsg to one peer; recvmmsg -> decap -> tun.  UDP datagrams starting with
 * the 4-byte non-ESP marker (IKE) are passed to ike_fd (an AF_UNIX SOCK_DGRAM socket) as one
 * message each: family (4|6) | 16-byte address | port (2, big-endian) | IKE message (marker
 * stripped).  NAT-keepalives (one 0xFF byte) are counted and dropped.  The SA/table pointers
 * are borrowed: keep them alive (and change them only while paused, see ie_loop_pause).  Run
 * ie_loop_run on its own thread; ie_loop_stop may be called from any thread.  ie_loop_new
 * puts tun_fd into non-blocking mode.  POLLERR on the socket (an ICMP error, e.g. the peer
 * restarting) is cleared and counted (sock_errors), not fatal. */
#define IE_LOOP_MAX_BATCH 256
/* Offloads (ie_loop_cfg.offload).  GSO: equal-size ESP datagrams of a batch leave as one
 * sendmsg with UDP_SEGMENT (falls back to one per datagram where the kernel refuses).  GRO: the
 * socket gets UDP_GRO, so one receive returns a train of datagrams (split before decap); the
 * option is switched off again by ie_loop_free, so others can read the socket datagram-wise. */
#define IE_LOOP_UDP_GSO 1
#define IE_LOOP_UDP_GRO 2

typedef struct ie_loop_cfg {
    int tun_fd;              /* IFF_TUN | IFF_NO_PI device */
    int udp_fd;              /* bound UDP socket (e.g. :4500) */
    int ike_fd;              /* -1: IKE datagrams are counted and dropped */
    int peer_family;         /* 4 or 6 */
    uint8_t peer_addr[16];
    uint16_t peer_port;
    uint32_t batch;          /* 1..IE_LOOP_MAX_BATCH */
    uint32_t mtu;            /* largest inner packet read from tun */
    int poll_ms;             /* how often the stop flag is looked at when idle */
    int raw_esp;             /* 1: udp_fd is a raw IPPROTO_ESP socket (IP protocol 50, no UDP,
                                no IKE/keepalive split; IPv4 receive skips the IP header) */
    uint32_t offload;        /* IE_LOOP_UDP_GSO | IE_LOOP_UDP_GRO (ESP-in-UDP only) */
    uint32_t sock_buf;       /* raise udp_fd's send/receive buffers to this (forced if root); 0: leave */
    int tun_vnet;            /* 1: tun_fd was opened with IFF_VNET_HDR (must match the device): the
                                loop enables TSO on it (TUNSETOFFLOAD csum+TSO4/6, reset on free),
                                cuts TCP super-packets into MTU-size segments itself; on the way back
                                consecutive segments of a TCP flow in a batch are written as one
                                super-packet (GRO), anything else behind a zero virtio_net_hdr */
    int transport;           /* 1: transport-mode ESP (RFC 4303 3.1.1) between this host (local_addr)
                                and the peer: a packet from tun loses its IP header (it must be to the
                                peer, unfragmented; else encap_drop) and its protocol becomes the ESP
                                next header; the socket adds the outer header.  Decapsulated data gets
                                a fresh header peer -> local_addr, protocol = next header, and after
                                UDP encapsulation a recomputed TCP/UDP checksum (RFC 3948 3.1.3).
                                No UDP GRO on receive in this mode. */
    uint8_t local_addr[16];  /* transport: this host's address (family of the peer) */
} ie_loop_cfg;

typedef struct ie_loop_stats {
    uint64_t tun_rx;         /* inner packets read from tun */
    uint64_t esp_tx;         /* ESP datagrams sent */
    uint64_t encap_drop;     /* read from tun, not sent: tun_bad + encap_exhausted + encap_error */
    uint64_t send_errors;
    uint64_t udp_rx;         /* datagrams received */
    uint64_t esp_ok;         /* decapsulated and written to tun */
    uint64_t decap_drop;     /* not written to tun: the sum of the decap_* reasons below */
    uint64_t ike_rx;         /* handed to ike_fd */
    uint64_t ike_drop;       /* no ike_fd, or it was full */
    uint64_t keepalive;
    uint64_t tun_tx_errors;
    uint64_t batches;
    uint64_t sock_errors;    /* ICMP errors reported on the socket (POLLERR / a send), survived */
    uint64_t udp_gso_trains; /* sends carrying several datagrams (UDP GSO) */
    uint64_t udp_gro_trains; /* receives returning several datagrams (UDP GRO) */
    uint64_t tun_tso;        /* TCP super-packets read from a vnet tun (tun_rx counts their segments) */
    uint64_t tun_gro;        /* coalesced TCP super-packets written to a vnet tun (esp_ok counts segments) */
    uint64_t no_policy;      /* read from tun, no outbound policy matches it (policies set): dropped */
    uint64_t ts_drop;        /* decapsulated, outside its SA's traffic selectors: dropped */
    /* every drop by reason (encap_drop and decap_drop are their sums) */
    uint64_t tun_bad;        /* read from tun, unusable: larger than the mtu, bad vnet header/TSO/checksum */
    uint64_t encap_exhausted; /* refused by a used-up outbound SA and lost: held when the loop stopped */
    uint64_t encap_error;    /* other encap failures: no room (TOO_BIG), transport header, OpenSSL */
    uint64_t encap_held;     /* refused by a used-up outbound SA, kept for the next one: not a drop */
    uint64_t decap_bad_icv;
    uint64_t decap_replay;
    uint64_t decap_unknown_sa;
    uint64_t decap_exhausted; /* inbound SA past its (relaxed) hard limit */
    uint64_t decap_other;    /* too short, bad padding/header/alignment, TFC dummy, truncated, raw IP header */
} ie_loop_stats;

typedef struct ie_loop ie_loop;
int ie_loop_new(const ie_loop_cfg *cfg, ie_esp_out *out, ie_esp_table *in, ie_loop **loop);
void ie_loop_free(ie_loop *loop);
/* One poll + at most one batch each way; returns packets handled, or -errno. */
int ie_loop_step(ie_loop *loop, int timeout_ms);
/* Until ie_loop_stop; returns 0, or -errno on a fatal poll error. */
int ie_loop_run(ie_loop *loop);
void ie_loop_stop(ie_loop *loop);
void ie_loop_get_stats(const ie_loop *loop, ie_loop_stats *out);
/* Live SA changes: ie_loop_pause returns once the loop is between batches and keeps it there
 * (packets wait in the kernel queues) until ie_loop_resume; meanwhile the borrowed table may be
 * edited (ie_esp_table_add/remove) and the outbound SA switched.  Any thread; not nested. */
void ie_loop_pause(ie_loop *loop);
void ie_loop_resume(ie_loop *loop);
/* Only while paused (or before the loop runs): send with `out` from now on (borrowed; NULL is
 * ignored); returns the previous outbound SA, no longer used by the loop. */
ie_esp_out *ie_loop_set_out(ie_loop *loop, ie_esp_out *out);
/* Several Child SAs with one peer (loop_policy.c).  A traffic selector (RFC 7296 3.13.1): one
 * family's address range (network order; IPv4 in the first 4 bytes), an IP protocol (0: any) and
 * a port range (ICMP: type << 8 | code; 0-65535: any, also matching packets without ports). */
#define IE_LOOP_MAX_POLICIES 64
#define IE_LOOP_MAX_IN_POLICIES 1024  /* replaced inbounds linger 1 s: ~100 rekeys/s at line rate with 8 MB lifetimes */
#define IE_LOOP_MAX_TS 16
typedef struct ie_ts {
    uint8_t family;          /* 4 or 6 */
    uint8_t proto;
    uint16_t port_lo, port_hi;
    uint8_t start[16], end[16];
} ie_ts;
/* Only while paused (or before the loop runs).  Outbound policy `slot` (< IE_LOOP_MAX_POLICIES):
 * a packet from tun whose source fits local[] and destination fits remote[] leaves on `out`
 * (borrowed); the lowest matching slot wins.  out NULL clears the slot.  While any slot is set,
 * a packet no slot matches is dropped (stats.no_policy) and the loop's own outbound SA is unused;
 * with none set, everything leaves on the loop's outbound SA (ie_loop_set_out). */
int ie_loop_set_out_policy(ie_loop *loop, uint32_t slot, ie_esp_out *out, const ie_ts *local, uint32_t nlocal,
                           const ie_ts *remote, uint32_t nremote);
/* Only while paused.  Inbound selectors of SA `spi`: a decapsulated packet whose source is not
 * in remote[] or destination not in local[] is dropped (stats.ts_drop).  SAs without an entry
 * are not checked.  Replaces an existing entry; IE_S_ENOMEM past IE_LOOP_MAX_IN_POLICIES. */
int ie_loop_set_in_policy(ie_loop *loop, uint32_t spi, const ie_ts *local, uint32_t nlocal, const ie_ts *remote,
                          uint32_t nremote);
int ie_loop_del_in_policy(ie_loop *loop, uint32_t spi);  /* IE_S_ENOENT if none */
/* What the loop would do with one inner IP packet (while paused; for tests and diagnostics):
 * the outbound slot it leaves on (-1: none matches; -2: no policies, the loop's own SA), and
 * whether inbound SA `spi` accepts it (1) or drops it as outside its selectors (0). */
int ie_loop_out_slot(const ie_loop *loop, const uint8_t *pkt, uint32_t len);
int ie_loop_in_ok(ie_loop *loop, uint32_t spi, const uint8_t *pkt, uint32_t len);
/* Expire events at once: after ie_loop_set_wakeup(loop, fd) with an eventfd (or any fd a write of
 * an 8-byte 1 wakes), the loop itself pops the expire events of the SAs it drives (the outbound
 * SA after each encap batch, the inbound SAs a decap batch used), queues them in its own ring and
 * writes the fd, so the control side rekeys within a batch of the soft limit instead of at its
 * next poll.  Those SAs' own event rings then belong to the loop: read them with ie_loop_events
 * (a single-consumer ring; any one thread, no pause needed).  fd -1 switches this off. */
typedef struct ie_loop_event {
    uint64_t sa;             /* outbound: the ie_esp_out it fired on (as an integer); inbound: 0 */
    uint32_t spi;            /* inbound: the SA's SPI; outbound: 0 */
    uint8_t code;            /* IE_EV_SOFT | IE_EV_BYTES ... */
    uint8_t outbound;
    uint8_t reserved[2];
} ie_loop_event;
void ie_loop_set_wakeup(ie_loop *loop, int event_fd);
size_t ie_loop_events(ie_loop *loop, ie_loop_event *out, size_t max);
/* ---- MACsec link loop (macsec_loop.c) ----
 * tap (IFF_TAP | IFF_NO_PI: one Ethernet frame per read) -> ie_macsec_protect -> sendmmsg on
 * phy_fd (an AF_PACKET SOCK_RAW socket bound to the link's veth); recvmmsg on phy_fd ->
 * EtherType 0x88E5 -> ie_macsec_validate -> tap.  Frames we sent (PACKET_OUTGOING) are skipped,
 * EAPOL (0x888E) frames are only counted (MKA reads them on its own socket), any other frame is
 * dropped (validate strict) or written to the tap as is (check / disabled).  With no Tx SA yet,
 * frames from the tap are dropped and counted (nothing leaves in clear).
 * Thread-safety: run ie_mloop_run on one thread; ie_mloop_set_tx, ie_mloop_rx_* and
 * ie_mloop_get_stats may be called from any other thread while it runs: they take the loop's
 * mutex, which the loop holds only while it handles one batch (so SA changes land between
 * batches and no frame is lost).  Do not call ie_macsec_rx_add_sa/remove_sa on the borrowed rx
 * directly while the loop exists.  The Tx SA passed to ie_mloop_set_tx is borrowed until a later
 * ie_mloop_set_tx returns it (or the loop is freed); reading its counters/next_pn/events from
 * another thread follows the general rules above.  ie_mloop_new puts both fds in non-blocking
 * mode.  Frames up to max_frame bytes (Ethernet header included, no FCS, before tagging) are
 * carried. */
typedef struct ie_mloop_cfg {
    int tap_fd;
    int phy_fd;
    uint32_t batch;          /* 1..IE_LOOP_MAX_BATCH */
    uint32_t max_frame;      /* largest frame read from the tap (60..65535) */
    int poll_ms;             /* how often the stop flag is looked at when idle */
    int validate;            /* enum ie_validate_mode: what happens to unprotected phy frames */
    uint16_t stag;           /* QinQ: 802.1ad S-tag VID (0: none; needs ctag) */
    uint16_t ctag;           /* Dot1Q / QinQ: 802.1Q C-tag VID (0: none).  The tap carries untagged
                                frames: the loop inserts the tag(s) before protecting (so they are
                                inside the protected data, as on a MACsec port) and checks and strips
                                them after validating (other VIDs are dropped: vlan_drop) */
    int tap_vnet;            /* the tap was opened with IFF_VNET_HDR (0: plain frames).  The loop
                                turns on its TSO offloads: TCP super-packets from the tap are cut
                                into max_frame frames (checksums completed) before protection, and
                                runs of validated TCP segments of one flow are written back as one
                                super-packet (others behind a zero vnet header) */
} ie_mloop_cfg;

typedef struct ie_mloop_stats {
    uint64_t tap_rx;         /* frames read from the tap */
    uint64_t phy_tx;         /* protected frames sent */
    uint64_t no_tx_sa;       /* dropped: no Tx SA installed yet */
    uint64_t protect_drop;   /* larger than max_frame, or a non-OK protect verdict */
    uint64_t send_errors;
    uint64_t phy_rx;         /* frames received on the phy (not our own) */
    uint64_t validated;      /* validated and written to the tap */
    uint64_t validate_drop;  /* not delivered by the SecY (see the SA/SecY counters), or runt */
    uint64_t eapol;          /* EAPOL frames seen (left to MKA) */
    uint64_t unprotected_drop;
    uint64_t unprotected_pass;
    uint64_t tap_tx_errors;
    uint64_t batches;
    uint64_t vlan_drop;      /* validated but not tagged with our VID(s) */
    uint64_t tap_tso;        /* vnet tap: TCP super-packets read (each segment counts in tap_rx) */
    uint64_t tap_gro;        /* vnet tap: coalesced super-packets written (segments in validated) */
    uint64_t phy_down;       /* the phy went down (ENETDOWN on its socket); the loop waits it out */
} ie_mloop_stats;

typedef struct ie_mloop ie_mloop;
int ie_mloop_new(const ie_mloop_cfg *cfg, ie_macsec_rx *rx, ie_mloop **loop);
void ie_mloop_free(ie_mloop *loop);
/* One poll + at most one batch each way; returns frames handled, or -errno. */
int ie_mloop_step(ie_mloop *loop, int timeout_ms);
/* Until ie_mloop_stop; returns 0, or -errno on a fatal poll error. */
int ie_mloop_run(ie_mloop *loop);
void ie_mloop_stop(ie_mloop *loop);
void ie_mloop_get_stats(ie_mloop *loop, ie_mloop_stats *out);
/* Switch the Tx SA (NULL: stop transmitting); returns the previous one, now unused by the loop. */
ie_macsec_tx *ie_mloop_set_tx(ie_mloop *loop, ie_macsec_tx *tx);
/* Add (replacing the same (SCI, AN)) / remove a receive SA between batches. */
int ie_mloop_rx_add_sa(ie_mloop *loop, const ie_macsec_sa_cfg *sa);
int ie_mloop_rx_remove_sa(ie_mloop *loop, uint64_t sci, uint8_t an);
int ie_mloop_rx_sa_counters(ie_mloop *loop, uint64_t sci, uint8_t an, ie_counters *out);
/* ---------------------------------------------------------------- link impairment (impair.c)
 * An element between two AF_PACKET sockets (one on each veth that replaces a lab link): frames read
 * on side A leave on side B (direction 0, "a_to_b") and the other way (direction 1), each direction
 * with its own delay + jitter (a timing wheel), loss, reorder, duplicate, corrupt and a rate (token
 * bucket); no netem needed.  Probabilities are parts per million.  Thread-safety as ie_mloop:
 * ie_imp_run on one thread; ie_imp_set/_get/_stats from any other (they take the element's mutex,
 * which the loop holds only while it handles one batch). */
#define IE_IMP_MAX_DELAY_NS 4000000000 /* delay + jitter; the wheel spans 2^32 ns */
#define IE_IMP_MAX_BATCH 64

typedef struct ie_imp_dir_cfg {
    uint64_t delay_ns;
    uint64_t jitter_ns;      /* uniform in [-jitter, +jitter] around delay, clamped at 0 */
    uint32_t loss_ppm;
    uint32_t reorder_ppm;    /* sent at once, ahead of the delayed queue (needs delay > 0) */
    uint32_t duplicate_ppm;
    uint32_t corrupt_ppm;    /* one random bit flipped after the Ethernet header */
    uint64_t rate_bps;       /* 0: unlimited */
    uint32_t limit;          /* frames queued in this direction at most (0: the pool size) */
    int32_t rate_overhead;   /* bytes added to each frame's length for the rate (may be negative, as
                                netem's packetoverhead: -76 counts only what an ESP tunnel carries) */
} ie_imp_dir_cfg;

typedef struct ie_imp_stats {
    uint64_t rx;             /* frames read */
    uint64_t passed;         /* frames sent on (duplicates included) */
    uint64_t bytes;          /* bytes sent on */
    uint64_t dropped_loss;
    uint64_t dropped_queue;  /* queue limit reached (rate too low for the offered load) */
    uint64_t dropped_tx;     /* the send failed (or a frame longer than max_frame) */
    uint64_t delayed;        /* frames that waited in the wheel */
    uint64_t reordered;
    uint64_t duplicated;
    uint64_t corrupted;
    uint64_t queued;         /* frames in the element now */
} ie_imp_stats;

typedef struct ie_imp ie_imp;
/* fd_a/fd_b: AF_PACKET sockets bound to their interfaces (put in non-blocking mode here);
 * max_frame: the largest frame (link MTU + 14 + tags); pool: frames each direction may hold;
 * seed: the RNG seed (0: from getrandom). */
int ie_imp_new(int fd_a, int fd_b, uint32_t max_frame, uint32_t pool, uint64_t seed, ie_imp **out);
void ie_imp_free(ie_imp *imp);
int ie_imp_set(ie_imp *imp, int dir, const ie_imp_dir_cfg *cfg);
int ie_imp_get(ie_imp *imp, int dir, ie_imp_dir_cfg *out);
int ie_imp_stats_get(ie_imp *imp, int dir, ie_imp_stats *out);
/* One poll + what is due; returns frames handled, or -errno. */
int ie_imp_step(ie_imp *imp, int timeout_ms);
/* Until ie_imp_stop; returns 0, or -errno on a fatal poll error. */
int ie_imp_run(ie_imp *imp);
void ie_imp_stop(ie_imp *imp);
/* CDEF END */

#endif
