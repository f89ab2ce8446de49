/* harness_link.c - compiles the integration tests' harness (tests/harness:
 * nats-server, etcd and child processes on free loopback ports) into the
 * replay bench (with fleet.c, its HTTP and /metrics helpers), so the fleet
 * starts exactly as the tests start it. Bench
 * directories link only the libsl_* libraries (see the Makefile header);
 * including the source here needs no Makefile rule. */
#include "tests/harness/fleet.c"
#include "tests/harness/harness.c"
