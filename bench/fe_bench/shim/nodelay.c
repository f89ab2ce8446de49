/* nodelay.c - LD_PRELOAD shim: TCP_NODELAY on every accepted socket.
 *
 * A diagnosis aid for `fe_bench --frontend-preload`: it shows what a server
 * that leaves Nagle on (sluice-frontend does not set civetweb's tcp_nodelay)
 * loses to delayed ACKs on keep-alive connections. Not built by the Makefile
 * (it only builds bench/<dir>/ files one level down): build it by hand,
 *   cc -shared -fPIC -O2 -o /tmp/nodelay.so bench/fe_bench/shim/nodelay.c -ldl
 */
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void shim_nodelay(int fd) {
    int one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int accept(int s, struct sockaddr *a, socklen_t *l) {
    int (*real)(int, struct sockaddr *, socklen_t *) = dlsym(RTLD_NEXT, "accept");
    int fd = real ? real(s, a, l) : -1;
    shim_nodelay(fd);
    return fd;
}

int accept4(int s, struct sockaddr *a, socklen_t *l, int flags) {
    int (*real)(int, struct sockaddr *, socklen_t *, int) = dlsym(RTLD_NEXT, "accept4");
    int fd = real ? real(s, a, l, flags) : -1;
    shim_nodelay(fd);
    return fd;
}
