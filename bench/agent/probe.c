/*
 * The benchmarks' trivial agent: it records when it started and exits.
 *
 * "Agent start" is the moment the agent process runs, so the probe reads
 * the wall clock (CLOCK_REALTIME, the clock oz-bench and the server use)
 * before anything else. It is C, linked statically, because whatever runs
 * before that read is counted as dispatch latency, and whatever runs at all
 * is counted in the floor's rate: here a dynamically linked Rust binary
 * spends about 0.4 ms in the loader and its runtime's start-up, and the
 * first reports' agent (`/bin/sh` running `date +%s%N`) about 1.3 ms.
 *
 * It writes the time (nanoseconds since the epoch, one line) to
 * $OZ_BENCH_STAMPS/$TASK_ID, or, without OZ_BENCH_STAMPS, to
 * <directory of argv[0]>/stamps/$TASK_ID. Arguments are ignored (the
 * worker passes `agent run ...`). Exit status 0, or 1 with a message on
 * stderr when it cannot write the stamp.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    struct timespec t;
    if (clock_gettime(CLOCK_REALTIME, &t) != 0) {
        perror("oz-bench probe: clock_gettime");
        return 1;
    }
    const char *id = getenv("TASK_ID");
    if (id == NULL || id[0] == '\0' || strchr(id, '/') != NULL) {
        fputs("oz-bench probe: TASK_ID is unset or not a file name\n", stderr);
        return 1;
    }
    char path[4096];
    int n;
    const char *dir = getenv("OZ_BENCH_STAMPS");
    if (dir != NULL && dir[0] != '\0') {
        n = snprintf(path, sizeof path, "%s/%s", dir, id);
    } else {
        const char *self = argc > 0 ? argv[0] : "";
        const char *slash = strrchr(self, '/');
        if (slash == NULL) {
            n = snprintf(path, sizeof path, "stamps/%s", id);
        } else {
            n = snprintf(path, sizeof path, "%.*s/stamps/%s", (int)(slash - self), self, id);
        }
    }
    if (n < 0 || (size_t)n >= sizeof path) {
        fputs("oz-bench probe: stamp path too long\n", stderr);
        return 1;
    }
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "oz-bench probe: cannot create %s: ", path);
        perror(NULL);
        return 1;
    }
    fprintf(f, "%lld%09ld\n", (long long)t.tv_sec, t.tv_nsec);
    if (fclose(f) != 0) {
        fprintf(stderr, "oz-bench probe: cannot write %s: ", path);
        perror(NULL);
        return 1;
    }
    return 0;
}
