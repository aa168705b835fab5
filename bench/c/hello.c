/* The floor of the FastCGI path: a libfcgi responder with the same
 * workloads as bench/apps.py, dispatched on the last segment of the path.
 *
 *   hello    13 bytes                      json_1k  a constant 1 KiB JSON
 *   big_1m   16 x 64 KiB                   big_1g   16384 x 64 KiB
 *   post_1m / post   the body read in 64 KiB reads, answered "<length> <adler32>\n"
 *
 * Build: gcc -O2 -o bench/c/hello bench/c/hello.c -lfcgi -lz   (bench/setup.sh)
 * Run:   spawn-fcgi -s SOCK -F 2 -- bench/c/hello   (the socket arrives on fd 0)
 *
 * libfcgi's stream buffer is 8 KiB, so big bodies go out as 8 KiB records:
 * this is libfcgi as people deploy it, not a tuned writer.
 */
#include <fcgiapp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define CHUNK 65536

static char chunk[CHUNK];
static char json_1k[1025];

static const char *last_segment(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static void build_json(void) {
    /* {"items":[{"id":0,"name":"item-000","ok":true},...],"pad":"xx..."} padded to 1024 bytes */
    size_t n = 0;
    n += snprintf(json_1k + n, sizeof json_1k - n, "{\"items\":[");
    for (int i = 0; i < 16; i++)
        n += snprintf(json_1k + n, sizeof json_1k - n, "%s{\"id\":%d,\"name\":\"item-%03d\",\"ok\":true}",
                      i ? "," : "", i, i);
    n += snprintf(json_1k + n, sizeof json_1k - n, "],\"pad\":\"");
    while (n < 1024 - 2) json_1k[n++] = 'x';
    json_1k[n++] = '"';
    json_1k[n++] = '}';
    json_1k[n] = 0;
}

static void respond(FCGX_Request *r, const char *type, const char *body, size_t len) {
    FCGX_FPrintF(r->out, "Status: 200 OK\r\nContent-Type: %s\r\nContent-Length: %lu\r\n\r\n",
                 type, (unsigned long)len);
    FCGX_PutStr(body, (int)len, r->out);
}

static void big(FCGX_Request *r, long chunks) {
    FCGX_FPrintF(r->out, "Status: 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %ld\r\n\r\n",
                 chunks * CHUNK);
    for (long i = 0; i < chunks; i++)
        if (FCGX_PutStr(chunk, CHUNK, r->out) < 0) return;
}

static void post(FCGX_Request *r) {
    static char buf[CHUNK];
    unsigned long length = 0;
    uLong sum = adler32(0L, Z_NULL, 0);
    int n;
    while ((n = FCGX_GetStr(buf, CHUNK, r->in)) > 0) {
        sum = adler32(sum, (const Bytef *)buf, (uInt)n);
        length += (unsigned long)n;
    }
    char out[64];
    int len = snprintf(out, sizeof out, "%lu %lu\n", length, (unsigned long)sum);
    respond(r, "text/plain", out, (size_t)len);
}

int main(void) {
    FCGX_Request r;
    memset(chunk, 'x', sizeof chunk);
    build_json();
    FCGX_Init();
    FCGX_InitRequest(&r, 0, 0);
    while (FCGX_Accept_r(&r) >= 0) {
        const char *path = FCGX_GetParam("DOCUMENT_URI", r.envp);
        if (!path) path = FCGX_GetParam("PATH_INFO", r.envp);
        if (!path) path = "";
        const char *name = last_segment(path);
        if (!strcmp(name, "json_1k"))
            respond(&r, "application/json", json_1k, strlen(json_1k));
        else if (!strcmp(name, "big_1m"))
            big(&r, 16);
        else if (!strcmp(name, "big_1g"))
            big(&r, 16384);
        else if (!strcmp(name, "post_1m") || !strcmp(name, "post"))
            post(&r);
        else
            respond(&r, "text/plain", "Hello, World!", 13);
        FCGX_Finish_r(&r);
    }
    return 0;
}
