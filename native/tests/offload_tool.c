/* offload_tool.c - drives offload.c (and the loops' receive path) from stdin, one command a
 * line, packets in hex, so tests/unit/native/test_offload.py can check cut sizes, headers,
 * checksums and coalescing against scapy.  Built plain and with ASan+UBSan (gcc and clang).
 *
 *   tso L2 GSO_TYPE GSO_SIZE MAX_OUT HEX   -> "seg HEX" per segment, then "end" | "reject"
 *   csum START OFFSET HEX                  -> "ok HEX" | "reject"
 *   gro L2 HEX HEX ...                     -> "write PKTS HEX" per write (virtio header
 *                                             included; "write PKTS -" for no headroom), "end"
 *   plainrx                                -> an ESP datagram received by a gateway loop on a
 *                                             plain (no vnet header) tun: "wrote N" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop_io.h"
#include "offload.h"

#define LINE_MAX_BYTES (1 << 20)

static uint8_t *unhex(const char *s, uint32_t *len)
{
    size_t n = strlen(s) / 2, i;
    uint8_t *b = malloc(n ? n : 1);

    for (i = 0; i < n; i++) {
        unsigned v;
        sscanf(s + 2 * i, "%2x", &v);
        b[i] = (uint8_t)v;
    }
    *len = (uint32_t)n;
    return b;
}

static void put_hex(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        printf("%02x", p[i]);
}

static void cmd_tso(char *args)
{
    unsigned l2, type, gso, max_out;
    char hex[LINE_MAX_BYTES];
    struct virtio_net_hdr h;
    ie_tso t;
    uint32_t len;
    uint8_t *pkt, *out;

    if (sscanf(args, "%u %u %u %u %s", &l2, &type, &gso, &max_out, hex) != 5)
        return (void)puts("usage");
    pkt = unhex(hex, &len);
    memset(&h, 0, sizeof h);
    h.gso_type = (uint8_t)type;
    h.gso_size = (uint16_t)gso;
    if (!ie_tso_start(&t, pkt, len, l2, &h, max_out)) {
        puts("reject");
    } else {
        out = malloc(max_out);  /* exactly max_out: ASan sees a segment that overruns it */
        while (t.active) {
            uint32_t n = ie_tso_next(&t, out);
            printf("seg ");
            put_hex(out, n);
            putchar('\n');
        }
        free(out);
        puts("end");
    }
    free(pkt);
}

static void cmd_csum(char *args)
{
    unsigned start, offset;
    char hex[LINE_MAX_BYTES];
    struct virtio_net_hdr h;
    uint32_t len;
    uint8_t *pkt;

    if (sscanf(args, "%u %u %s", &start, &offset, hex) != 3)
        return (void)puts("usage");
    pkt = unhex(hex, &len);
    memset(&h, 0, sizeof h);
    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h.csum_start = (uint16_t)start;
    h.csum_offset = (uint16_t)offset;
    if (ie_vnet_finish_csum(pkt, len, &h)) {
        printf("ok ");
        put_hex(pkt, len);
        putchar('\n');
    } else {
        puts("reject");
    }
    free(pkt);
}

static void print_write(void *ctx, uint8_t *d, size_t len, uint32_t pkts)
{
    (void)ctx;
    printf("write %u ", pkts);
    if (d)
        put_hex(d, len);
    else
        putchar('-');
    putchar('\n');
}

static void cmd_gro(char *args)
{
    static ie_gro g;
    ie_pkt pkts[IE_LOOP_MAX_BATCH];
    uint8_t *coal = malloc(IE_VNET_LEN + 65536);
    unsigned l2;
    uint32_t k = 0, i;
    char *tok, *save;

    tok = strtok_r(args, " \n", &save);
    l2 = tok ? (unsigned)atoi(tok) : 0;
    while ((tok = strtok_r(NULL, " \n", &save)) && k < IE_LOOP_MAX_BATCH) {
        uint32_t len;
        uint8_t *raw = unhex(tok, &len), *buf = malloc(IE_VNET_LEN + len + 1);
        memcpy(buf + IE_VNET_LEN, raw, len);
        free(raw);
        memset(&pkts[k], 0, sizeof pkts[k]);
        pkts[k].buf = buf;
        pkts[k].off = IE_VNET_LEN;
        pkts[k].len = len;
        pkts[k].cap = IE_VNET_LEN + len;
        pkts[k].flags = IE_PKT_DELIVER;
        k++;
    }
    printf("built %u\n", ie_vnet_deliver(&g, coal, pkts, k, l2, print_write, NULL));
    for (i = 0; i < k; i++)
        free(pkts[i].buf);
    free(coal);
    puts("end");
}

static uint32_t tun_writes;

static ssize_t count_write(int fd, const void *buf, size_t len)
{
    (void)fd;
    (void)buf;
    tun_writes++;
    return (ssize_t)len;
}

/* [fuzz] defect 1: a plain tun's receive batch used to end in NULL + VNET_LEN (clang UBSan). */
static void cmd_plainrx(void)
{
    static const uint8_t key[20] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    ie_esp_cfg sa = {.spi = 0x1234, .encr = IE_ENCR_AES_GCM_16, .enc_key = key, .enc_key_len = 20,
                     .replay_window = 64, .initial_seq = 1};
    ie_io io = {.read = NULL, .write = count_write, .sendmmsg = NULL, .sendmsg = NULL};
    ie_loop_cfg cfg = {.tun_fd = -1, .udp_fd = -1, .ike_fd = -1, .peer_family = 4, .batch = 8, .mtu = 1400};
    struct sockaddr_storage from = {.ss_family = AF_INET};
    ie_esp_out *out;
    ie_esp_table *in = ie_esp_table_new();
    ie_loop *l;
    uint8_t buf[256] = {0}, v;
    ie_pkt p = {.buf = buf, .off = IE_ESP_HEADROOM, .len = 40, .cap = sizeof buf, .next_header = 4};
    uint32_t k = 0;

    buf[IE_ESP_HEADROOM] = 0x45;
    ie_esp_cfg sa_in = sa;

    sa_in.initial_seq = 0;
    if (ie_esp_out_new(&sa, &out) || ie_esp_table_add(in, &sa_in) || ie_loop_new_io(&cfg, out, in, &io, &l))
        return (void)puts("setup failed");
    ie_esp_encap(out, &p, 1, &v);
    ie_loop_rx_msg(l, &from, p.buf + p.off, p.len, 0, 0, &k);
    ie_loop_rx_end(l, k);
    printf("wrote %u\n", tun_writes);
    ie_loop_free(l);
    ie_esp_out_free(out);
    ie_esp_table_free(in);
}

int main(void)
{
    static char line[2 * LINE_MAX_BYTES];

    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "tso ", 4))
            cmd_tso(line + 4);
        else if (!strncmp(line, "csum ", 5))
            cmd_csum(line + 5);
        else if (!strncmp(line, "gro ", 4))
            cmd_gro(line + 4);
        else if (!strncmp(line, "plainrx", 7))
            cmd_plainrx();
        else
            puts("unknown");
        fflush(stdout);
    }
    return 0;
}
