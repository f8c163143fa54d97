/* N fork+execs of one program; prints microseconds per exec, and per-exec latencies' p50/p99.
   Used by benches/exec.sh. Build: cc -O2 -o spawn spawn.c */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: spawn N PROGRAM\n"); return 2; }
    int n = atoi(argv[1]);
    double *lat = calloc(n, sizeof *lat);
    int failed = 0;
    double t0 = now_us();
    for (int i = 0; i < n; i++) {
        double s = now_us();
        pid_t pid = fork();
        if (pid == 0) {
            char *args[] = { argv[2], NULL };
            execv(argv[2], args);
            _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed++;
        lat[i] = now_us() - s;
    }
    double total = now_us() - t0;
    qsort(lat, n, sizeof *lat, cmp);
    printf("%.1f %.1f %.1f %d\n", total / n, lat[n / 2], lat[(int)(n * 0.99)], failed);
    return 0;
}
