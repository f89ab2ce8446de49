/* harness_link.c - compiles the integration tests' process helpers
 * (tests/harness/harness.c: free loopback ports, spawning children that die
 * with us) into fe_bench, as bench/replay does. Bench directories link only
 * the libsl_* libraries (see the Makefile header); including the source here
 * needs no Makefile rule. */
#include "tests/harness/harness.c"
