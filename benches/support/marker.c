/* A program that does its work at once: main() creates the file named by its first argument.
   Padded to hundreds of MB, it stands in for the real Claude Code binary (245-373 MB) in
   benches/exec.sh's survival-window measurement: the marker appears only if main ran. */
#include <fcntl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1) {
        int fd = open(argv[1], O_CREAT | O_WRONLY, 0644);
        if (fd >= 0) close(fd);
    }
    return 0;
}
