/* web: a small HTTP/1.0 service for health-check demos.
 *
 *   GET /health   200 "ok"            (503 "unhealthy" once WEB_FAIL_AFTER
 *                                       requests have been served, if set)
 *   GET /         200 "berth web VERSION"
 *   anything else 404
 *
 *   WEB_PORT        TCP port (default 8080), bound on all addresses
 *   WEB_VERSION     text reported by / (default "1")
 *   WEB_FAIL_AFTER  number of requests after which /health fails (default never)
 *
 * One request at a time, with a 5 s read deadline per connection; SIGTERM
 * stops it cleanly. */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig) { (void)sig; stop = 1; }

static void reply(int c, int code, const char *status, const char *body) {
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     code, status, strlen(body), body);
    if (n > 0) (void)!write(c, buf, (size_t)n);
}

int main(void) {
    const char *p = getenv("WEB_PORT");
    int port = p && *p ? atoi(p) : 8080;
    const char *version = getenv("WEB_VERSION");
    if (!version || !*version) version = "1";
    const char *fa = getenv("WEB_FAIL_AFTER");
    long fail_after = fa && *fa ? atol(fa) : -1;
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int s = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int fam6 = s >= 0;
    if (!fam6) s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, zero = 0;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc;
    if (fam6) {
        setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        rc = bind(s, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        rc = bind(s, (struct sockaddr *)&a, sizeof a);
    }
    if (rc != 0 || listen(s, 16) != 0) {
        fprintf(stderr, "web: cannot listen on port %d: %s\n", port, strerror(errno));
        return 2;
    }
    printf("web: version %s listening on port %d\n", version, port);
    fflush(stdout);
    long served = 0;
    while (!stop) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        struct timeval tv = {5, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char req[1024];
        ssize_t n = read(c, req, sizeof req - 1);
        if (n > 0) {
            req[n] = 0;
            served++;
            if (strncmp(req, "GET /health ", 12) == 0) {
                if (fail_after >= 0 && served > fail_after)
                    reply(c, 503, "Service Unavailable", "unhealthy\n");
                else
                    reply(c, 200, "OK", "ok\n");
            } else if (strncmp(req, "GET / ", 6) == 0) {
                char body[128];
                snprintf(body, sizeof body, "berth web %s\n", version);
                reply(c, 200, "OK", body);
            } else {
                reply(c, 404, "Not Found", "not found\n");
            }
        }
        close(c);
    }
    printf("web: stopped\n");
    return 0;
}
