/* sensor: reads a simulated temperature sensor and appends each reading to
 * its volume.
 *
 *   SENSOR_INPUT     file holding the current reading in milli-degrees (as a
 *                    sysfs hwmon temp*_input); when unset or unreadable, a
 *                    deterministic simulated signal is used
 *   SENSOR_READING   a fixed reading in milli-degrees (its leading number, e.g.
 *                    a calibration value), used when SENSOR_INPUT gives none
 *   SENSOR_LOG       where readings are appended (default /data/readings.log)
 *   SENSOR_INTERVAL  milliseconds between readings (default 1000)
 *   SENSOR_COUNT     stop after this many readings (default: run until SIGTERM)
 *
 * Each reading is one line `seq=N millideg=M` on stdout and in the log; the
 * log is fsync'ed so a power cut loses at most the reading being written. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig) { (void)sig; stop = 1; }

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    long n = strtol(v, &end, 10);
    return (*end || n < 0) ? dflt : n;
}

/* A slow triangle wave between 20.000 and 25.000 degrees. */
static long simulated(long seq) {
    long phase = seq % 100;
    long up = phase < 50 ? phase : 100 - phase;
    return 20000 + up * 100;
}

static long reading(const char *input, long seq) {
    if (input) {
        FILE *f = fopen(input, "r");
        if (f) {
            long v;
            int ok = fscanf(f, "%ld", &v) == 1;
            fclose(f);
            if (ok) return v;
        }
    }
    const char *fixed = getenv("SENSOR_READING");
    if (fixed && *fixed) {
        char *end;
        long v = strtol(fixed, &end, 10);
        if (end != fixed) return v;
    }
    return simulated(seq);
}

int main(void) {
    const char *input = getenv("SENSOR_INPUT");
    const char *log = getenv("SENSOR_LOG");
    if (!log || !*log) log = "/data/readings.log";
    long interval = env_long("SENSOR_INTERVAL", 1000);
    long count = env_long("SENSOR_COUNT", -1);
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "sensor: cannot open %s: %s (mount a writable volume there)\n",
                log, strerror(errno));
        return 2;
    }
    printf("sensor: started, logging to %s\n", log);
    fflush(stdout);
    for (long seq = 0; !stop && (count < 0 || seq < count); seq++) {
        char line[64];
        int n = snprintf(line, sizeof line, "seq=%ld millideg=%ld\n", seq, reading(input, seq));
        if (write(fd, line, (size_t)n) != n || fsync(fd) != 0) {
            fprintf(stderr, "sensor: cannot append to %s: %s\n", log, strerror(errno));
            return 3;
        }
        fputs(line, stdout);
        fflush(stdout);
        if (count >= 0 && seq + 1 >= count) break;
        struct timespec ts = {interval / 1000, (interval % 1000) * 1000000L};
        while (!stop && nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    }
    close(fd);
    printf("sensor: stopped\n");
    return 0;
}
