/* broken: exits at start, on purpose, for rollback demos. */
#include <stdio.h>

int main(void) {
    fprintf(stderr, "broken: failing at start on purpose (exit 1)\n");
    return 1;
}
