/* loop_tool.c - the gateway loop's hand-over at a used-up outbound SA (issue #13, branch rekey0),
 * through its I/O boundary (loop_io.h) with no devices, so tests/unit/native/test_loop_hold.py
 * can check it plain and under ASan+UBSan (gcc and clang).  One command a line:
 *
 *   hold VNET TRANSPORT POLICY BATCH HARD NPKTS
 *       the tun holds NPKTS IPv4/UDP packets numbered 0..NPKTS-1; the outbound SA A refuses
 *       everything after HARD packets.  Prints, for every tun batch: "batch" and, per datagram
 *       sent, "sent SPI SEQ NUMBER" (decrypted with the peer's inbound SAs); then "switch" when
 *       SA B replaces A (ie_loop_set_out, or with POLICY=1 ie_loop_set_out_policy) and the
 *       batches go on until the tun is empty; last "stats tun_rx N encap_drop N encap_held N
 *       encap_exhausted N".  VNET=1: every read carries a virtio header;
 *       TRANSPORT=1: transport mode (the packets go to the peer).
 *   wake TIMEOUT_MS
 *       8 packets, A used up after 5: the 3 refused ones are held; a thread runs one
 *       ie_loop_step(TIMEOUT_MS) on idle fds while, 50 ms in, B replaces A (pause, set_out,
 *       resume).  Prints the sends, then "step RETURNED MS": how soon the held packets left. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "loop_io.h"
#include "offload.h"

#define MAX_PKTS 256
#define PKT_LEN 32  /* IPv4 20 + UDP 8 + number 4 */

static const uint8_t PEER[4] = {192, 0, 2, 2}, LOCAL[4] = {192, 0, 2, 1};
static uint8_t pkts[MAX_PKTS][IE_VNET_LEN + PKT_LEN];
static uint32_t npkts, next_read;
static int vnet, transport;
static ie_esp_table *peer_in;  /* the peer: decrypts what was sent, to tell which packet it was */

static ssize_t t_read(int fd, void *buf, size_t len)
{
    size_t n = (size_t)PKT_LEN + (vnet ? IE_VNET_LEN : 0);

    (void)fd;
    if (next_read >= npkts) {
        errno = EAGAIN;
        return -1;
    }
    if (n > len)
        n = len;
    memcpy(buf, pkts[next_read++] + (vnet ? 0 : IE_VNET_LEN), n);
    return (ssize_t)n;
}

static ssize_t t_write(int fd, const void *buf, size_t len)
{
    (void)fd;
    (void)buf;
    return (ssize_t)len;
}

static void show(const uint8_t *d, size_t len)
{
    uint8_t copy[2048], v;
    ie_pkt p;
    uint32_t at;

    if (len > sizeof copy)
        return (void)puts("sent too-long");
    memcpy(copy, d, len);
    memset(&p, 0, sizeof p);
    p.buf = copy;
    p.len = (uint32_t)len;
    p.cap = (uint32_t)len;
    ie_esp_decap(peer_in, &p, 1, &v);
    if (v != IE_OK)
        return (void)printf("sent undecryptable %u\n", v);
    at = p.off + (transport ? 8 : 28);  /* transport: the payload is UDP onward */
    printf("sent %08x %u %u\n", p.spi, (unsigned)p.seq,
           (unsigned)copy[at] << 24 | (unsigned)copy[at + 1] << 16 | (unsigned)copy[at + 2] << 8 | copy[at + 3]);
}

static int t_sendmmsg(int fd, struct mmsghdr *m, unsigned int n, int flags)
{
    unsigned int i;
    size_t j;

    (void)fd;
    (void)flags;
    for (i = 0; i < n; i++)
        for (j = 0; j < m[i].msg_hdr.msg_iovlen; j++)
            show(m[i].msg_hdr.msg_iov[j].iov_base, m[i].msg_hdr.msg_iov[j].iov_len);
    return (int)n;
}

static ssize_t t_sendmsg(int fd, const struct msghdr *m, int flags)
{
    size_t j;

    (void)fd;
    (void)flags;
    for (j = 0; j < m->msg_iovlen; j++)
        show(m->msg_iov[j].iov_base, m->msg_iov[j].iov_len);
    return 0;
}

static void make_pkts(uint32_t n)
{
    uint32_t i;

    for (i = 0; i < n; i++) {
        uint8_t *d = pkts[i] + IE_VNET_LEN;
        memset(pkts[i], 0, sizeof pkts[i]);  /* virtio header: no GSO, no checksum to finish */
        d[0] = 0x45;
        d[3] = PKT_LEN;
        d[8] = 64;
        d[9] = 17;
        memcpy(d + 12, LOCAL, 4);
        memcpy(d + 16, transport ? PEER : (const uint8_t[4]){10, 2, 0, 2}, 4);
        d[21] = 7;  /* ports 7 -> 9 */
        d[23] = 9;
        d[25] = 12;  /* UDP length */
        d[28] = (uint8_t)(i >> 24);
        d[29] = (uint8_t)(i >> 16);
        d[30] = (uint8_t)(i >> 8);
        d[31] = (uint8_t)i;
    }
}

static void cmd_hold(const char *args)
{
    static const uint8_t ka[20] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    static const uint8_t kb[20] = {21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40};
    unsigned v, t, pol, batch, hard, n, rounds;
    ie_esp_cfg a = {.spi = 0xaaaa, .encr = IE_ENCR_AES_GCM_16, .enc_key = ka, .enc_key_len = 20,
                    .replay_window = 64, .initial_seq = 1};
    ie_esp_cfg b = a, ain, bin;
    ie_io io = {t_read, t_write, t_sendmmsg, t_sendmsg};
    ie_loop_cfg cfg = {.tun_fd = -1, .udp_fd = -1, .ike_fd = -1, .peer_family = 4, .mtu = 1400};
    ie_ts any = {.family = 4, .proto = 0, .port_lo = 0, .port_hi = 65535,
                 .start = {0, 0, 0, 0}, .end = {255, 255, 255, 255}};
    ie_esp_out *oa, *ob;
    ie_esp_table *in = ie_esp_table_new();
    ie_loop_stats st;
    ie_loop *l;

    if (sscanf(args, "%u %u %u %u %u %u", &v, &t, &pol, &batch, &hard, &n) != 6 || n > MAX_PKTS)
        return (void)puts("usage");
    vnet = (int)v;
    transport = (int)t;
    npkts = n;
    next_read = 0;
    make_pkts(n);
    a.hard_packets = hard;
    b.spi = 0xbbbb;
    b.enc_key = kb;
    ain = a;
    bin = b;
    ain.initial_seq = bin.initial_seq = 0;
    ain.hard_packets = 0;
    peer_in = ie_esp_table_new();
    cfg.batch = batch;
    cfg.tun_vnet = vnet;
    cfg.transport = transport;
    memcpy(cfg.peer_addr, PEER, 4);
    memcpy(cfg.local_addr, LOCAL, 4);
    if (!in || !peer_in || ie_esp_out_new(&a, &oa) || ie_esp_out_new(&b, &ob) || ie_esp_table_add(peer_in, &ain) ||
        ie_esp_table_add(peer_in, &bin) || ie_loop_new_io(&cfg, oa, in, &io, &l))
        return (void)puts("setup failed");
    if (pol && ie_loop_set_out_policy(l, 0, oa, &any, 1, &any, 1))
        return (void)puts("setup failed");
    /* A until it is used up: the batch that crosses the limit keeps what A refused */
    puts("batch");
    ie_loop_tun_batch(l);
    puts("switch");
    if (pol)
        ie_loop_set_out_policy(l, 0, ob, &any, 1, &any, 1);
    else
        ie_loop_set_out(l, ob);
    for (rounds = 0; rounds < MAX_PKTS; rounds++) {
        puts("batch");
        if (ie_loop_tun_batch(l) == 0)
            break;
    }
    ie_loop_get_stats(l, &st);
    printf("stats tun_rx %llu encap_drop %llu encap_held %llu encap_exhausted %llu\n",
           (unsigned long long)st.tun_rx, (unsigned long long)st.encap_drop, (unsigned long long)st.encap_held,
           (unsigned long long)st.encap_exhausted);
    ie_loop_free(l);
    ie_esp_out_free(oa);
    ie_esp_out_free(ob);
    ie_esp_table_free(in);
    ie_esp_table_free(peer_in);
}

static double now_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

struct stepper {
    ie_loop *l;
    int timeout_ms, rc;
    double took_ms;
};

static void *run_step(void *arg)
{
    struct stepper *s = arg;
    double t0 = now_ms();

    s->rc = ie_loop_step(s->l, s->timeout_ms);
    s->took_ms = now_ms() - t0;
    return NULL;
}

static void cmd_wake(const char *args)
{
    static const uint8_t ka[20] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    static const uint8_t kb[20] = {21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40};
    ie_esp_cfg a = {.spi = 0xaaaa, .encr = IE_ENCR_AES_GCM_16, .enc_key = ka, .enc_key_len = 20,
                    .replay_window = 64, .initial_seq = 1, .hard_packets = 5};
    ie_esp_cfg b = a, ain, bin;
    ie_io io = {t_read, t_write, t_sendmmsg, t_sendmsg};
    ie_loop_cfg cfg = {.ike_fd = -1, .peer_family = 4, .mtu = 1400, .batch = 8};
    int tunp[2], udpp[2];
    struct stepper st = {0};
    struct timespec fifty = {0, 50 * 1000 * 1000};
    ie_esp_out *oa, *ob;
    ie_esp_table *in = ie_esp_table_new();
    pthread_t th;
    ie_loop *l;

    if (sscanf(args, "%d", &st.timeout_ms) != 1)
        return (void)puts("usage");
    vnet = transport = 0;
    npkts = 8;
    next_read = 0;
    make_pkts(npkts);
    b.spi = 0xbbbb;
    b.enc_key = kb;
    b.hard_packets = 0;
    ain = a;
    bin = b;
    ain.initial_seq = bin.initial_seq = 0;
    ain.hard_packets = 0;
    peer_in = ie_esp_table_new();
    /* idle stand-ins for the tun and the socket: poll sees nothing on them */
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, tunp) || socketpair(AF_UNIX, SOCK_DGRAM, 0, udpp))
        return (void)puts("setup failed");
    cfg.tun_fd = tunp[0];
    cfg.udp_fd = udpp[0];
    if (!in || !peer_in || ie_esp_out_new(&a, &oa) || ie_esp_out_new(&b, &ob) || ie_esp_table_add(peer_in, &ain) ||
        ie_esp_table_add(peer_in, &bin) || ie_loop_new_io(&cfg, oa, in, &io, &l))
        return (void)puts("setup failed");
    puts("batch");
    ie_loop_tun_batch(l);  /* 5 on A, 3 held */
    st.l = l;
    pthread_create(&th, NULL, run_step, &st);
    nanosleep(&fifty, NULL);
    ie_loop_pause(l);
    ie_loop_set_out(l, ob);
    ie_loop_resume(l);
    pthread_join(th, NULL);
    printf("step %d %.0f\n", st.rc, st.took_ms);
    ie_loop_free(l);
    ie_esp_out_free(oa);
    ie_esp_out_free(ob);
    ie_esp_table_free(in);
    ie_esp_table_free(peer_in);
    close(tunp[0]);
    close(tunp[1]);
    close(udpp[0]);
    close(udpp[1]);
}

int main(void)
{
    char line[256];

    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "hold ", 5))
            cmd_hold(line + 5);
        else if (!strncmp(line, "wake ", 5))
            cmd_wake(line + 5);
        else
            puts("unknown");
        fflush(stdout);
    }
    return 0;
}
