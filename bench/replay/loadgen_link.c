/* loadgen_link.c - compiles the loadgen modules the replay shares
 * (httpc: libcurl settings and error kinds) into the replay bench, as
 * harness_link.c does for tests/harness. Bench directories link only the
 * libsl_* libraries (see the Makefile header); including the source here
 * needs no Makefile rule. */
#include "bench/loadgen/httpc.c"
